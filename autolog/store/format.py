"""The local store's on-disk format, shared by the writer (`LocalSink`, `Run`) and `read_run`.

A run directory ``<dir>/<project>/<run id>/`` holds:

``run.json``
    identity, status, config, meta and summary; replaced atomically (write a temporary file,
    fsync, rename) when the run starts, when its config changes and when it ends. Strict JSON:
    non-finite numbers are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``.
``events.alog``
    the append-only record log: the 8-byte magic ``b"AUTOLOG1"``, then records, each
    ``<u32 length><u32 crc32 of payload><payload>`` (little endian). The payload's first byte is its
    kind: ``S`` scalars, ``H`` histograms, ``M`` media. It continues with a u32 length and a UTF-8
    JSON header, then the kind's arrays (little-endian, packed):

    - ``S``: header ``{"keys": [names], "n": count}``; arrays ``u32 key index[n]``,
      ``i64 step[n]``, ``f64 value[n]``, ``f64 wall time[n]``.
    - ``H``: header ``{"items": [{"name", "step", "wall", "bins"}]}``; per item
      ``f64 edges[bins + 1]`` then ``f64 counts[bins]``.
    - ``M``: header ``{"items": [{"kind", "name", "step", "wall", "path", "text"}]}``, no arrays.

    A record is written with one ``write`` call and the file flushed after every batch, so a
    ``kill -9`` loses nothing already flushed; the reader stops at the first torn or corrupt
    record, so a record cut short by a crash is skipped.
``media/``
    images and figures as PNG files, named ``<name>_<step>_<n>.png``.
``.lock``
    held (``flock``) by the writing process while the run is open: a run whose ``run.json`` still
    says ``running`` but whose lock is free was left by a process that died: ``crashed``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
import zlib
from typing import Any, Iterator

import numpy as np

MAGIC = b"AUTOLOG1"
RUN_FILE = "run.json"
EVENTS_FILE = "events.alog"
LOCK_FILE = ".lock"
MEDIA_DIR = "media"
FORMAT_VERSION = 1

_REC = struct.Struct("<II")
_U32 = struct.Struct("<I")


def json_default(value: Any) -> Any:
    """JSON for the odd values that reach run.json (numpy numbers, paths, sets)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _finite_or_str(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf': JSON has no literal for them
    return value


@contextlib.contextmanager
def atomic_file(path: str, prefix: str = ".tmp-", **open_kwargs: Any) -> Iterator[Any]:
    """Write a file that replaces `path` in one step: a temporary file in the same directory,
    fsynced, then renamed over `path`; on any error `path` is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        os.fchmod(fd, 0o644)
        with open(fd, "w", **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never half."""
    text = json.dumps(data, default=json_default, indent=1, allow_nan=False,
                      ensure_ascii=False) if _is_finite_tree(data) else \
        json.dumps(_sanitize(data), default=json_default, indent=1, ensure_ascii=False)
    with atomic_file(path, prefix=".run-", encoding="utf-8") as fh:
        fh.write(text)


def _is_finite_tree(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_is_finite_tree(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_finite_tree(v) for v in value)
    return True


def _sanitize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return _finite_or_str(value)


def read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------- records

def _record(kind: bytes, header: dict[str, Any], *arrays: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":"), default=json_default).encode()
    payload = b"".join((kind, _U32.pack(len(head)), head) + arrays)
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


def encode_scalars(points: list[tuple[str, int, float, float]]) -> bytes:
    """One ``S`` record for a list of (name, step, value, wall time) points."""
    if not points:
        return b""
    names, steps, values, walls = zip(*points)
    index: dict[str, int] = {}
    keys = [index.setdefault(n, len(index)) for n in names]
    return _record(b"S", {"keys": list(index), "n": len(points)},
                   np.asarray(keys, dtype="<u4").tobytes(),
                   np.asarray(steps, dtype="<i8").tobytes(),
                   np.asarray(values, dtype="<f8").tobytes(),
                   np.asarray(walls, dtype="<f8").tobytes())


def encode_histograms(items: list[Any]) -> bytes:
    """One ``H`` record for `HistogramRecord`s."""
    if not items:
        return b""
    header = {"items": [{"name": h.name, "step": int(h.step), "wall": float(h.wall_time),
                         "bins": len(h.counts)} for h in items]}
    data = [np.asarray(h.edges, dtype="<f8").tobytes() + np.asarray(h.counts, dtype="<f8").tobytes()
            for h in items]
    return _record(b"H", header, *data)


def encode_media(items: list[dict[str, Any]]) -> bytes:
    """One ``M`` record for media index entries."""
    return _record(b"M", {"items": items}) if items else b""


def iter_records(data: bytes, start: int = 0) -> Iterator[tuple[bytes, dict[str, Any], memoryview, int]]:
    """(kind, header, array bytes, end offset) for every intact record from offset `start`;
    stops at the first torn one."""
    if not data.startswith(MAGIC):
        return
    view = memoryview(data)
    pos, end = max(start, len(MAGIC)), len(data)
    while pos + _REC.size <= end:
        length, crc = _REC.unpack_from(data, pos)
        start = pos + _REC.size
        if start + length > end or length < 5:
            return  # torn final record
        payload = view[start:start + length]
        if zlib.crc32(payload) != crc:
            return  # corrupt: everything after it is untrusted
        (hlen,) = _U32.unpack_from(payload, 1)
        try:
            header = json.loads(bytes(payload[5:5 + hlen]))
        except ValueError:
            return
        yield bytes(payload[:1]), header, payload[5 + hlen:], start + length
        pos = start + length


def decode_scalars(header: dict[str, Any], body: memoryview) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = int(header["n"])
    keys = np.frombuffer(body, dtype="<u4", count=n, offset=0)
    steps = np.frombuffer(body, dtype="<i8", count=n, offset=4 * n)
    values = np.frombuffer(body, dtype="<f8", count=n, offset=12 * n)
    walls = np.frombuffer(body, dtype="<f8", count=n, offset=20 * n)
    return header["keys"], keys, steps, values, walls


def decode_histograms(header: dict[str, Any], body: memoryview) -> Iterator[tuple[dict[str, Any], list[float], list[float]]]:
    pos = 0
    for item in header["items"]:
        bins = int(item["bins"])
        edges = np.frombuffer(body, dtype="<f8", count=bins + 1, offset=pos)
        counts = np.frombuffer(body, dtype="<f8", count=bins, offset=pos + 8 * (bins + 1))
        pos += 8 * (2 * bins + 1)
        yield item, edges.tolist(), counts.tolist()


# ---------------------------------------------------------------- PNG

def encode_png(image: np.ndarray) -> bytes:
    """A PNG file for a uint8 HWC array with 1, 3 or 4 channels (no Pillow needed)."""
    height, width, channels = image.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


class LogArrays:
    """Everything intact in a run's ``events.alog``, in log order, as columns.

    Scalars as parallel arrays (``keys`` indexes ``names``), histograms as (item header, edges,
    counts), media as their index entries. Shared by `read_run` and the replay."""

    def __init__(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        index: dict[str, int] = {}
        parts: tuple[list, list, list, list] = ([], [], [], [])
        self.histograms: list[tuple[dict[str, Any], list[float], list[float]]] = []
        self.media: list[dict[str, Any]] = []
        for kind, header, body, _end in iter_records(data):
            if kind == b"S":
                names, idx, steps, values, walls = decode_scalars(header, body)
                remap = np.asarray([index.setdefault(n, len(index)) for n in names], dtype=np.int64)
                for part, array in zip(parts, (remap[idx], steps, values, walls)):
                    part.append(array)
            elif kind == b"H":
                self.histograms.extend(decode_histograms(header, body))
            elif kind == b"M":
                self.media.extend(header["items"])
        self.names = list(index)
        empty = (np.int64, np.int64, np.float64, np.float64)
        self.keys, self.steps, self.values, self.walls = (
            np.concatenate(part) if part else np.zeros(0, dtype=dtype) for part, dtype in zip(parts, empty))
