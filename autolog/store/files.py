"""A run's files other than the log: the run directory, its lock, run.json, PNGs, the reserve.

Writers that can meet a full disk (`RunFiles.write_record`, `RunFiles.write_png`) never raise:
an ``OSError`` is counted with `note_error` in the same shape `EventLog.errors` uses, for
``meta["store_errors"]``, and told once on stderr.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import struct
import sys
import tempfile
import time
import zlib
from typing import Any, Iterator

import numpy as np

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
MEDIA_DIR = "media"
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 1 << 20  # freed on a full disk so that the run's end can still be recorded


def note_error(errors: dict[str, Any], exc: BaseException, lost: dict[str, int] | None = None) -> bool:
    """Count `exc` in `errors` (``count``, ``first_error``, ``lost``); True the first time."""
    first = "count" not in errors
    errors["count"] = errors.get("count", 0) + 1
    errors.setdefault("first_error", f"{type(exc).__name__}: {exc}")
    if lost:
        total = errors.setdefault("lost", {})
        for key, n in lost.items():
            total[key] = total.get(key, 0) + n
    return first


_told: set[str] = set()  # run directories whose write errors were already told on stderr


def tell_once(errors: dict[str, Any], path: str, exc: BaseException, lost: dict[str, int] | None = None) -> None:
    """`note_error`, and on the run directory's first error a line on stderr saying what goes on
    (one line per run however many of its files fail). `path`: the file that failed."""
    if note_error(errors, exc, lost):
        parent = os.path.dirname(path)
        run_dir = os.path.dirname(parent) if os.path.basename(parent) == MEDIA_DIR else parent
        if run_dir in _told:
            return
        _told.add(run_dir)
        print(f"autolog: cannot write {path}: {type(exc).__name__}: {exc}; training goes on, what "
              f"cannot be written is counted in meta['store_errors'] and writing is retried",
              file=sys.stderr)


# ---------------------------------------------------------------- JSON

def json_default(value: Any) -> Any:
    """JSON for the odd values that reach run.json or a record (numpy numbers, paths, sets)."""
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


def fsync_dir(path: str) -> None:
    """Make a file created or renamed in directory `path` survive a power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        fsync_dir(os.path.dirname(path) or ".")
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


# ---------------------------------------------------------------- the run directory

def new_run_dir(parent: str) -> tuple[str, str]:
    """A run id unique across processes, and its freshly created directory under `parent`."""
    os.makedirs(parent, exist_ok=True)
    for _ in range(100):
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)
        path = os.path.join(parent, run_id)
        try:
            os.mkdir(path)  # exclusive: a collision picks another id
            return run_id, path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run directory under {parent!r}")


def hold_lock(run_dir: str) -> int:
    """Take the run's lock (held while the run is open); returns its descriptor."""
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


class RunFiles:
    """The writing side of a run directory: run.json, PNGs and the reserve; never raises on a
    write. `errors` maps ``"run.json"`` and ``"media"`` to `note_error` counts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: dict[str, dict[str, Any]] = {}
        self._reserve = os.path.join(path, RESERVE_FILE)
        self._failed_record = False
        try:  # best effort: a disk already full leaves no room to reserve
            fd = os.open(self._reserve, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            self._free_reserve()

    def _free_reserve(self) -> None:
        try:
            os.unlink(self._reserve)
        except OSError:
            pass

    def write_record(self, record: dict[str, Any], final: bool = False) -> bool:
        """Replace run.json with `record`. At the end (`final`) the reserve is freed first when the
        disk is full, so the run's true status is recorded. False when it could not be written."""
        path = os.path.join(self.path, RUN_FILE)
        try:
            write_json_atomic(path, record)
        except OSError:
            if final:
                self._free_reserve()
                try:
                    write_json_atomic(path, record)
                    return True
                except OSError as again:
                    exc = again
            tell_once(self.errors.setdefault(RUN_FILE, {}), path, exc, {"writes": 1})
            return False
        finally:
            if final:
                self._free_reserve()
        return True

    def write_png(self, name: str, image: np.ndarray) -> str | None:
        """Write `image` as ``media/<name>.png``; its path relative to the run, or None if lost."""
        rel = os.path.join(MEDIA_DIR, f"{name}.png")
        try:
            os.makedirs(os.path.join(self.path, MEDIA_DIR), exist_ok=True)
            with open(os.path.join(self.path, rel), "wb") as fh:
                fh.write(encode_png(image))
            return rel
        except OSError as exc:
            try:
                os.unlink(os.path.join(self.path, rel))
            except OSError:
                pass
            tell_once(self.errors.setdefault("media", {}), os.path.join(self.path, rel), exc, {"images": 1})
            return None
