"""The bytes of ``events.alog``: record framing and the batch codec (format described in
`autolog.store`). Pure functions over bytes; the file itself is `autolog.store.log`.

Reading never trusts the file: a frame is taken only when its header checksum and payload
checksum match, and a payload is decoded only after every count and length in its header was
checked against the bytes actually there. Anything else is skipped (counted in `ScanStats`) and
the scan resynchronises at the next sync marker.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import struct
import zlib
from typing import Any, Iterator

import numpy as np

from autolog.store.files import json_default
# Moved to `autolog.store.files`; re-exported here for one release (code written against the old layout).
from autolog.store.files import LOCK_FILE, MEDIA_DIR, RUN_FILE, atomic_file, encode_png, read_json, write_json_atomic  # noqa: F401

EVENTS_FILE = "events.alog"
MAGIC = b"AUTOLOG2"  # the file header of the current format
MAGIC_V1 = b"AUTOLOG1"  # version 1: unframed records, still read
FORMAT_VERSION = 2
SYNC = b"\xffAL\xfe"  # starts every frame; 0xff and 0xfe never occur in the UTF-8 JSON header

_FRAME = struct.Struct("<4sQII")  # sync, sequence number, payload length, payload crc32
_HCRC = struct.Struct("<I")  # crc32 of the 20 bytes above
FRAME_SIZE = _FRAME.size + _HCRC.size  # 24
_V1_REC = struct.Struct("<II")
_U32 = struct.Struct("<I")
_SCALAR_BYTES = 4 + 8 + 8 + 8  # u32 key, i64 step, f64 value, f64 wall per point


class BadRecord(ValueError):
    """A record whose checksum matched but whose header does not describe its payload."""


# ---------------------------------------------------------------- writing

def encode_frame(seq: int, payload: bytes) -> bytes:
    """One framed record: sync marker, sequence number, length, checksums, payload."""
    head = _FRAME.pack(SYNC, seq, len(payload), zlib.crc32(payload))  # crc32 releases the GIL on big payloads
    return b"".join((head, _HCRC.pack(zlib.crc32(head)), payload))


def encode_batch(scalars: list[tuple[str, int, float, float]], histograms: list[Any],
                 media: list[dict[str, Any]], step: int = 0, prog_bar: tuple[str, ...] = (),
                 config: dict[str, Any] | None = None, columns: Any = None) -> bytes:
    """The payload of one batch (kind ``B``); empty when there is nothing to store. Raises
    ValueError, TypeError or OverflowError for anything the reader would not take back (a
    step beyond int64, a name that is not a string, ...), so every record written reads back.

    `columns`: more scalar points as `autolog.pipeline.records.ScalarColumns`, stored before
    `scalars` (the same record as if they were tuples, without a Python object per point)."""
    if not (scalars or histograms or media or config or (columns is not None and len(columns))):
        return b""
    header: dict[str, Any] = {"step": _in_range(step, "step")}
    arrays: list[Any] = []  # bytes-like: numpy arrays go into the join as they are
    parts = [_scalar_columns(columns)] if columns is not None and len(columns) else []
    if scalars:
        names, steps, values, walls = zip(*scalars)  # the one per-point pass in Python; the rest is numpy
        index, keys = _name_keys(names)
        parts.append((index, keys, _column(steps, "iu", "<i8", "steps"), _column(values, "fiub", "<f8", "values"),
                      _column(walls, "fiub", "<f8", "wall times")))
    if parts:
        index, keys, steps, values, walls = parts[0] if len(parts) == 1 else _joined(parts)
        if not all(type(n) is str for n in index):
            raise TypeError("scalar names must be strings")
        header["keys"], header["n"] = index, len(keys)
        arrays += [keys.astype("<u4", copy=False), steps, values, walls]
    if histograms:
        header["hist"] = [{"name": _text(h.name, "histogram name"), "step": _in_range(h.step, "histogram step"),
                           "wall": float(h.wall_time), "bins": len(h.counts)} for h in histograms]
        for h in histograms:
            edges, counts = np.ascontiguousarray(h.edges, dtype="<f8"), np.ascontiguousarray(h.counts, dtype="<f8")
            if edges.ndim != 1 or counts.ndim != 1 or len(edges) != len(counts) + 1:
                raise ValueError(f"histogram {h.name!r}: expected len(edges) == len(counts) + 1")
            arrays += [edges, counts]
    if media:
        for item in media:
            _text(item["kind"], "media kind"), _text(item["name"], "media name")
            item["step"], item["wall"] = _in_range(item["step"], "media step"), float(item["wall"])
            if not all(item.get(k) is None or type(item[k]) is str for k in ("path", "text")):
                raise TypeError("media path and text must be strings")
        header["media"] = media
    if prog_bar:
        header["prog_bar"] = [_text(n, "prog_bar name") for n in prog_bar]
    if config:
        if not isinstance(config, dict):
            raise TypeError("config must be a dict")
        header["config"] = config
    head = json.dumps(header, separators=(",", ":"), default=json_default).encode()
    return b"".join([b"B", _U32.pack(len(head)), head] + arrays)  # numpy arrays join without a copy of their own


def _scalar_columns(columns: Any) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`ScalarColumns` as the codec's (names, keys, steps, values, wall times), checked."""
    n = len(columns.keys)
    steps = np.ascontiguousarray(columns.steps, dtype="<i8")
    values = np.ascontiguousarray(columns.values, dtype="<f8")
    walls = np.ascontiguousarray(columns.walls, dtype="<f8")
    keys = np.ascontiguousarray(columns.keys, dtype="<u4")
    if not (len(steps) == len(values) == len(walls) == n) or (n and int(keys.max()) >= len(columns.names)):
        raise ValueError("scalar columns: expected one key, step, value and wall time per point")
    return list(columns.names), keys, steps, values, walls


def _joined(parts: list[tuple]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Several (names, keys, steps, values, walls) as one, names merged in order of appearance."""
    index: dict[str, int] = {}
    keys = []
    for names, part_keys, *_rest in parts:
        remap = np.fromiter((index.setdefault(name, len(index)) for name in names), dtype="<u4", count=len(names))
        keys.append(remap[part_keys] if len(part_keys) else part_keys.astype("<u4"))
    return (list(index), np.concatenate(keys), *(np.concatenate([p[i] for p in parts]) for i in (2, 3, 4)))


def _name_keys(names: tuple) -> tuple[list[str], np.ndarray]:
    """The distinct names in order of first appearance, and each point's index into them (u4).

    Most batches repeat one cycle of names per step (``loss, acc, lr, loss, acc, lr, ...``):
    that is recognised with a few tuple operations in C and the keys are a tiled range; any other
    order costs one dict lookup per point, also without a Python-level loop. Names are compared
    as a dict compares them (equal and of equal hash), as before."""
    n = len(names)
    try:
        period = names.index(names[0], 1)
    except ValueError:
        period = n
    if n % period == 0:
        head = names[:period]
        if period == n or names == head * (n // period):
            distinct = dict.fromkeys(head)  # TypeError for an unhashable name, as before
            if len(distinct) == period:
                return list(distinct), np.tile(np.arange(period, dtype="<u4"), n // period)
    index: collections.defaultdict = collections.defaultdict()
    index.default_factory = index.__len__  # a new name gets the next index
    keys = np.fromiter(map(index.__getitem__, names), dtype=np.int64, count=n)
    return list(index), keys.astype("<u4")


def _column(items: tuple, kinds: str, dtype: str, what: str) -> np.ndarray:
    """Packed `items` (contiguous, in `dtype`); refuses what numpy would only take by converting
    it (a float or text step, a text value, an int beyond int64). Numpy's own type discovery does
    the checking, in C: one pass over the points, none in Python."""
    array = np.asarray(items)
    if array.ndim != 1:  # a sequence in place of each number: not one number per point
        raise ValueError(f"{what}: expected one number per point")
    if array.dtype.kind not in kinds or (array.dtype.kind == "u" and dtype == "<i8" and array.max() >= 2 ** 63):
        raise ValueError(f"{what}: expected numbers{' (integers in int64)' if dtype == '<i8' else ''}, got {array.dtype}")
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _in_range(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2 ** 63:
        raise ValueError(f"{what}: expected an integer in [0, 2**63), got {value!r:.40}")
    return int(value)


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{what}: expected a string, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- reading

@dataclasses.dataclass
class Record:
    """One decoded record: scalars as parallel arrays (`keys` indexes `names`), histograms as
    (item header, edges, counts), media as index entries, and the batch's step, prog_bar, config."""

    names: list[str]
    keys: np.ndarray
    steps: np.ndarray
    values: np.ndarray
    walls: np.ndarray
    histograms: list[tuple[dict[str, Any], list[float], list[float]]]
    media: list[dict[str, Any]]
    step: int = 0
    prog_bar: tuple[str, ...] = ()
    config: dict[str, Any] | None = None
    seq: int | None = None


@dataclasses.dataclass
class ScanStats:
    """What a scan met: records taken, bad ones skipped, bytes skipped while resynchronising,
    and whether bytes that are no complete record are left at the end (a torn tail, or a record
    still being written)."""

    records: int = 0
    bad_records: int = 0
    skipped_bytes: int = 0
    torn_tail: bool = False
    last_seq: int = -1
    missing: int = 0  # sequence numbers not seen between records taken (records lost to damage)
    end: int = 0  # the offset after the last complete record
    resume: int = 0  # where a scan of the next piece of the file starts


_EMPTY_U4 = np.zeros(0, dtype="<u4")
_EMPTY_I8 = np.zeros(0, dtype="<i8")
_EMPTY_F8 = np.zeros(0, dtype="<f8")


def _int(value: Any, what: str, low: int = 0, high: int = 2 ** 63 - 1) -> int:
    if type(value) is not int or not low <= value <= high:
        raise BadRecord(f"{what}: expected an integer in [{low}, {high}], got {value!r:.40}")
    return value


def _float(value: Any, what: str) -> float:
    if type(value) not in (int, float):
        raise BadRecord(f"{what}: expected a number, got {value!r:.40}")
    return float(value)


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        raise BadRecord(f"{what}: expected a list of strings")
    return value


def _scalars(header: dict[str, Any], body: memoryview, pos: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    if "n" not in header:
        return [], _EMPTY_U4, _EMPTY_I8, _EMPTY_F8, _EMPTY_F8, pos
    n = _int(header["n"], "n", 0, (len(body) - pos) // _SCALAR_BYTES)
    names = _str_list(header.get("keys"), "keys")
    keys = np.frombuffer(body, dtype="<u4", count=n, offset=pos)
    if n and int(keys.max()) >= len(names):
        raise BadRecord(f"a key index is beyond the {len(names)} names")
    steps = np.frombuffer(body, dtype="<i8", count=n, offset=pos + 4 * n)
    values = np.frombuffer(body, dtype="<f8", count=n, offset=pos + 12 * n)
    walls = np.frombuffer(body, dtype="<f8", count=n, offset=pos + 20 * n)
    return names, keys, steps, values, walls, pos + _SCALAR_BYTES * n


def _histograms(items: Any, body: memoryview, pos: int) -> tuple[list[tuple[dict[str, Any], list[float], list[float]]], int]:
    if not isinstance(items, list):
        raise BadRecord("histograms: expected a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or type(item.get("name")) is not str:
            raise BadRecord("histogram: expected an object with a name")
        _int(item.get("step"), "histogram step")
        _float(item.get("wall", 0.0), "histogram wall")
        bins = _int(item.get("bins"), "bins", 0, max(0, (len(body) - pos) // 16))
        size = 8 * (2 * bins + 1)
        if pos + size > len(body):
            raise BadRecord("histogram: bins beyond the payload")
        edges = np.frombuffer(body, dtype="<f8", count=bins + 1, offset=pos)
        counts = np.frombuffer(body, dtype="<f8", count=bins, offset=pos + 8 * (bins + 1))
        pos += size
        out.append((item, edges.tolist(), counts.tolist()))
    return out, pos


def _media(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise BadRecord("media: expected a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or type(item.get("kind")) is not str or type(item.get("name")) is not str:
            raise BadRecord("media: expected an object with a kind and a name")
        path, text = item.get("path"), item.get("text")
        if not (path is None or type(path) is str) or not (text is None or type(text) is str):
            raise BadRecord("media: path and text must be strings")
        out.append({"kind": item["kind"], "name": item["name"], "step": _int(item.get("step", 0), "media step"),
                    "wall": _float(item.get("wall", 0.0), "media wall"), "path": path, "text": text})
    return out


def decode_payload(payload: memoryview) -> Record:
    """A record from one payload (v1 kinds ``S``, ``H``, ``M`` or v2 ``B``); raises `BadRecord`."""
    if len(payload) < 5:
        raise BadRecord("payload shorter than its header length")
    kind = bytes(payload[:1])
    (hlen,) = _U32.unpack_from(payload, 1)
    if 5 + hlen > len(payload):
        raise BadRecord("header length beyond the payload")
    try:
        header = json.loads(bytes(payload[5:5 + hlen]))
    except (ValueError, RecursionError) as exc:
        raise BadRecord(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRecord("header is not an object")
    body, pos = payload[5 + hlen:], 0
    names, keys, steps, values, walls = [], _EMPTY_U4, _EMPTY_I8, _EMPTY_F8, _EMPTY_F8
    histograms: list = []
    media: list = []
    if kind == b"B":
        names, keys, steps, values, walls, pos = _scalars(header, body, pos)
        histograms, pos = _histograms(header.get("hist", []), body, pos)
        media = _media(header.get("media", []))
        step = _int(header.get("step", 0), "step")
        prog_bar = tuple(_str_list(header.get("prog_bar", []), "prog_bar"))
        config = header.get("config")
        if config is not None and not isinstance(config, dict):
            raise BadRecord("config: expected an object")
        if pos != len(body):
            raise BadRecord(f"payload holds {len(body) - pos} bytes its header does not describe")
        return Record(names, keys, steps, values, walls, histograms, media, step, prog_bar, config)
    if kind == b"S":
        names, keys, steps, values, walls, pos = _scalars(header, body, pos)
    elif kind == b"H":
        histograms, pos = _histograms(header.get("items"), body, pos)
    elif kind == b"M":
        media = _media(header.get("items"))
    else:
        raise BadRecord(f"unknown record kind {kind!r}")
    return Record(names, keys, steps, values, walls, histograms, media)


def _next_frame(data: bytes, pos: int) -> int:
    """The offset of the next frame header with a valid checksum at or after `pos`, or -1."""
    while True:
        pos = data.find(SYNC, pos)
        if pos < 0 or pos + FRAME_SIZE > len(data):
            return -1
        if zlib.crc32(data[pos:pos + _FRAME.size]) == _HCRC.unpack_from(data, pos + _FRAME.size)[0]:
            return pos
        pos += 1


def iter_records(data: bytes, start: int = 0, stats: ScanStats | None = None,
                 base: int = 0, final: bool = True) -> Iterator[tuple[Record, int]]:
    """Every complete, intact, well-formed record of a log's bytes from file offset `start`, with
    the file offset just after it. Never raises on bad bytes: they are skipped and counted in
    `stats`. `data` holds the file from offset `base` on (a format-2 file read in pieces); when it
    is not `final` (more of the file follows), the scan stops at the first record that does not
    fit and `stats.resume` says where the next piece should start."""
    stats = stats if stats is not None else ScanStats()
    if base == 0 and data.startswith(MAGIC_V1):
        yield from _iter_v1(data, start, stats)
        return
    view = memoryview(data)
    pos, size = max(start, len(MAGIC), base) - base, len(data)
    if not stats.end:  # a fresh scan; a later piece of the same file keeps what came before
        stats.end = pos + base
    while pos + FRAME_SIZE <= size:
        frame = _next_frame(data, pos)
        if frame < 0:  # only garbage, or a frame header still being written, is left
            garbage = max(pos, size - FRAME_SIZE + 1)  # no frame can start before this
            stats.skipped_bytes += garbage - pos
            pos = garbage
            break
        if frame != pos:
            stats.skipped_bytes += frame - pos
            pos = frame
        _sync, seq, length, crc = _FRAME.unpack_from(data, pos)
        begin, end = pos + FRAME_SIZE, pos + FRAME_SIZE + length
        if end > size:
            later = _next_frame(data, pos + 1) if final else -1
            if later < 0:
                break  # cut short by a crash, still being written, or in the next piece
            stats.bad_records += 1  # torn, and the writer went on after it
            stats.skipped_bytes += later - pos
            pos = later
            continue
        payload = view[begin:end]
        if zlib.crc32(payload) != crc:
            stats.bad_records += 1  # a corrupt byte: resynchronise inside it
            stats.skipped_bytes += 1
            pos += 1
            continue
        pos = end
        try:
            record = decode_payload(payload)
        except BadRecord:
            stats.bad_records += 1
            stats.end = pos + base
            continue
        record.seq = seq
        if seq > stats.last_seq + 1 and (stats.records or start <= len(MAGIC)):
            stats.missing += seq - stats.last_seq - 1  # from the start, the first is 0
        stats.records += 1
        stats.last_seq = seq
        stats.end = pos + base
        yield record, pos + base
    stats.resume = pos + base
    stats.torn_tail = pos < size  # bytes left that are no complete record (yet)


def _iter_v1(data: bytes, start: int, stats: ScanStats) -> Iterator[tuple[Record, int]]:
    """Version 1: ``<u32 length><u32 crc32><payload>`` records; stops at the first torn or corrupt
    one (v1 has no sync marker to resynchronise on)."""
    view = memoryview(data)
    pos, size = max(start, len(MAGIC_V1)), len(data)
    stats.end = pos
    while pos + _V1_REC.size <= size:
        length, crc = _V1_REC.unpack_from(data, pos)
        begin = pos + _V1_REC.size
        if begin + length > size:
            break
        payload = view[begin:begin + length]
        if zlib.crc32(payload) != crc:
            stats.bad_records += 1
            stats.skipped_bytes += size - pos
            return
        pos = begin + length
        stats.end = pos
        try:
            record = decode_payload(payload)
        except BadRecord:
            stats.bad_records += 1
            continue
        stats.records += 1
        yield record, pos
    stats.torn_tail = pos < size


class LogArrays:
    """Everything intact in a log file, in log order, as columns: scalars as parallel arrays
    (``keys`` indexes ``names``), histograms as (item header, edges, counts), media as their
    index entries; `stats` says what the scan met. Shared by `read_run` and the replay.

    ``ends`` (per scalar), ``histogram_ends`` and ``media_ends`` are the file offsets where each
    one's record ends (which attempt of a resumed run wrote it); ``last_step`` is the run's step
    at the last hand-off."""

    def __init__(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = b""
        self.stats = ScanStats()
        index: dict[str, int] = {}
        parts: tuple[list, list, list, list, list] = ([], [], [], [], [])
        self.histograms: list[tuple[dict[str, Any], list[float], list[float]]] = []
        self.media: list[dict[str, Any]] = []
        self.histogram_ends: list[int] = []
        self.media_ends: list[int] = []
        self.last_step = 0
        for record, end in iter_records(data, 0, self.stats):
            if len(record.keys):
                remap = np.asarray([index.setdefault(n, len(index)) for n in record.names], dtype=np.int64)
                for part, array in zip(parts, (remap[record.keys], record.steps, record.values, record.walls,
                                               np.full(len(record.keys), end, dtype=np.int64))):
                    part.append(array)
            self.histograms.extend(record.histograms)
            self.media.extend(record.media)
            self.histogram_ends.extend([end] * len(record.histograms))
            self.media_ends.extend([end] * len(record.media))
            self.last_step = record.step
        self.names = list(index)
        empty = (np.int64, np.int64, np.float64, np.float64, np.int64)
        self.keys, self.steps, self.values, self.walls, self.ends = (
            np.concatenate(part).astype(dtype, copy=False) if part else np.zeros(0, dtype=dtype)
            for part, dtype in zip(parts, empty))
