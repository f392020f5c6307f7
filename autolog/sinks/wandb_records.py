"""Read an offline W&B run back: the records of its ``.wandb`` file.

wandb ships no Python reader for the transaction log an offline run writes, so autolog has its
own (used by the tests and by ``autolog replay``). The file is::

    header    7 bytes: b":W&B", u16 magic 0xBEE1 (little endian), u8 version 0
    chunks    LevelDB-log framing in 32 KiB blocks (the header counts towards the first block);
              each chunk: u32 checksum, u16 length, u8 type (1 full, 2 first, 3 middle, 4 last)
              and `length` bytes. The checksum is CRC-32 (zlib) of the type byte then the data.
              A block tail shorter than a chunk header is zero padding.

A record is a serialized ``wandb.proto.wandb_internal_pb2.Record``, split over chunks when it
does not fit in the rest of a block. A truncated last record (a killed process) ends the read
quietly; a checksum mismatch raises `ValueError`.

Only ``wandb.proto`` is imported, and only when a file is read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
import zlib
from typing import Any, Iterator

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
_CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclasses.dataclass
class WandbRunRecords:
    """What an offline W&B run holds, decoded from its records.

    `history`: one dict per committed row, in file order, with W&B's own keys (`_step`,
    `_timestamp`, `_runtime`); media and histograms stay nested dicts (``{"_type": ...}``).
    `config` and `summary`: the final state after every update (config without W&B's internal
    ``_wandb`` key). `exit_code`: None when the run never finished (crash, kill).
    """

    path: str
    run_id: str | None = None
    project: str | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str) -> list[tuple[int, Any]]:
        """`(step, value)` of every history row that has `key`."""
        return [(row["_step"], row[key]) for row in self.history if key in row]


def iter_chunk_payloads(data: bytes, offset: int = 0) -> Iterator[bytes]:
    """Whole record payloads from the bytes of a ``.wandb`` file.

    `data` starts at byte `offset` of the file: 0 (the header is checked) or a block boundary,
    in which case chunks continuing a record from an earlier block are skipped.
    """
    if offset % BLOCK_SIZE:
        raise ValueError(f"offset {offset} is not a multiple of the block size {BLOCK_SIZE}")
    pos, parts, synced = 0, [], offset == 0
    if offset == 0:
        if data[: len(HEADER)] != HEADER:
            raise ValueError(f"not a W&B transaction log: header {data[:len(HEADER)]!r}")
        pos = len(HEADER)
    while True:
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < _CHUNK.size:  # zero padding at the end of a block
            pos += left
            continue
        if pos + _CHUNK.size > len(data):
            return
        checksum, length, kind = _CHUNK.unpack_from(data, pos)
        start = pos + _CHUNK.size
        chunk = data[start:start + length]
        if len(chunk) < length:  # truncated tail: the writer died mid-record
            return
        if checksum == 0 and length == 0 and kind == 0:  # preallocated, never written
            return
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"W&B transaction log: checksum mismatch at byte {offset + pos}")
        pos = start + length
        if kind in (FULL, FIRST):
            synced = True
        if not synced:
            continue
        if kind == FULL:
            parts = []
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            parts.append(chunk)
            yield b"".join(parts)
            parts = []
        else:
            raise ValueError(f"W&B transaction log: unknown chunk type {kind} "
                             f"at byte {offset + pos}")


def _parse(payload: bytes) -> Any:
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    record.ParseFromString(payload)
    return record


def iter_records(path: str | os.PathLike) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order."""
    with open(path, "rb") as fh:
        data = fh.read()
    for payload in iter_chunk_payloads(data):
        yield _parse(payload)


def has_exit_record(path: str | os.PathLike) -> bool:
    """Whether the file already holds the run's exit record (cheap: reads the last two blocks).

    wandb-core buffers the transaction log and writes its last block only when it closes the
    run's stream, which happens shortly *after* ``run.finish()`` returns.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    offset = max(0, (size // BLOCK_SIZE - 1) * BLOCK_SIZE)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    try:
        return any(_parse(p).WhichOneof("record_type") == "exit"
                   for p in iter_chunk_payloads(data, offset))
    except ValueError:
        return False


def wait_for_exit_record(path: str | os.PathLike, timeout: float = 10.0) -> bool:
    """Wait until the file holds its exit record; False if `timeout` seconds pass first.

    ``run.finish()`` returns before wandb-core closes the run's stream, and the log's last
    block reaches the disk only then. wandb offers no call to wait for that, so the file is
    polled (a few milliseconds in practice).
    """
    deadline = time.monotonic() + timeout
    while not has_exit_record(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def find_wandb_file(path: str | os.PathLike) -> str:
    """The ``.wandb`` file for `path`: the file itself, an ``offline-run-*`` directory, or a
    directory holding ``wandb/`` (an autolog run directory); the newest run when several."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    candidates = []
    for base in (path, os.path.join(path, "wandb")):
        if not os.path.isdir(base):
            continue
        for entry in os.listdir(base):
            full = os.path.join(base, entry)
            if entry.endswith(".wandb") and os.path.isfile(full):
                candidates.append(full)
            elif entry.startswith(("offline-run-", "run-")) and os.path.isdir(full):
                candidates += [os.path.join(full, f) for f in os.listdir(full)
                               if f.endswith(".wandb")]
    if not candidates:
        raise FileNotFoundError(f"no .wandb file in {path}")
    # offline-run-<YYYYmmdd_HHMMSS>-<id>: the directory name sorts by start time
    return max(candidates,
               key=lambda f: (os.path.basename(os.path.dirname(f)), os.path.getmtime(f)))


def _key(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[keys[-1]] = value


def _remove(target: dict[str, Any], keys: list[str]) -> None:
    for k in keys[:-1]:
        target = target.get(k)
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def _apply(target: dict[str, Any], updates: Any, removes: Any = ()) -> None:
    for item in updates:
        _set(target, _key(item), json.loads(item.value_json))
    for item in removes:
        _remove(target, _key(item))


def read_wandb_run(path: str | os.PathLike) -> WandbRunRecords:
    """Decode an offline W&B run (see `find_wandb_file` for what `path` may be)."""
    file = find_wandb_file(path)
    out = WandbRunRecords(path=file)
    for record in iter_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.run_id = run.run_id or out.run_id
            out.project = run.project or out.project
            out.name = run.display_name or out.name
            out.tags = tuple(run.tags) or out.tags
            _apply(out.config, run.config.update, run.config.remove)
            _apply(out.summary, run.summary.update, run.summary.remove)
        elif kind == "config":
            _apply(out.config, record.config.update, record.config.remove)
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply(row, record.history.item)
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            out.history.append(row)
        elif kind == "summary":
            _apply(out.summary, record.summary.update, record.summary.remove)
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    out.config.pop("_wandb", None)
    return out
