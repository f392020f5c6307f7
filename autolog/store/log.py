"""The run's record log, ``events.alog``: `EventLog` appends batches, `read_batches` reads them back.

The byte format is described in `autolog.store`; encoding and decoding live in
`autolog.store.format`. This module owns the file: opening, appending, fsync and faults.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterator

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord
from autolog.store import format as fmt


def _media_index(batch: Batch) -> list[dict[str, Any]]:
    """The media index entries of a batch (images and figures are already PNG files)."""
    return [{"kind": m.kind, "name": m.name, "step": m.step, "wall": m.wall_time, "path": m.path,
             "text": m.data if m.kind == "text" else (m.data or {}).get("text") if m.kind == "graph" else None}
            for m in batch.media]


class EventLog:
    """Appends batches to ``<run_dir>/events.alog``; never raises.

    Each `append` is one ``write`` of one record, so a process killed afterwards loses nothing
    already appended; ``fsync_secs`` bounds what an OS crash or power loss can lose (the file is
    fsynced at most that often; 0: after every append). An ``OSError`` (a full disk, a vanished
    directory) costs the batches that could not be written: it is counted in `errors`, told once
    on stderr, and the next append tries again.
    """

    def __init__(self, run_dir: str, fsync_secs: float = 1.0) -> None:
        self.path = os.path.join(run_dir, fmt.EVENTS_FILE)
        self.fsync_secs = fsync_secs
        self.errors: dict[str, Any] = {}
        self._fh: Any = None
        self._last_sync = 0.0
        self._end: int | None = None
        self._told = False
        try:
            self._open()
        except OSError as exc:
            self._fail(exc, Batch())  # retried at the first append

    def _open(self) -> None:
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._fh = open(self.path, "ab", buffering=0)
        if new:
            self._write(fmt.MAGIC)
        self._end = self._fh.tell()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may be partial
            view = view[self._fh.write(view):]

    def _fail(self, exc: OSError, batch: Batch) -> None:
        errors = self.errors
        errors["count"] = errors.get("count", 0) + 1
        errors.setdefault("first_error", f"{type(exc).__name__}: {exc}")
        lost = errors.setdefault("lost", {"batches": 0, "scalars": 0, "histograms": 0, "media": 0})
        lost["batches"] += 1
        lost["scalars"] += len(batch.scalars)
        lost["histograms"] += len(batch.histograms)
        lost["media"] += len(batch.media)
        if not self._told:
            self._told = True
            print(f"autolog: cannot write {self.path}: {type(exc).__name__}: {exc}; training goes on, "
                  f"the records that cannot be written are counted in meta['store_errors']",
                  file=sys.stderr)

    def append(self, batch: Batch) -> int | None:
        """Append one batch; returns the file's end offset after it, or None if it was lost."""
        data = (fmt.encode_scalars(batch.scalars) + fmt.encode_histograms(batch.histograms)
                + fmt.encode_media(_media_index(batch)))
        try:
            if self._fh is None:
                self._open()
            if data:
                self._write(data)
                self._end += len(data)
                now = time.monotonic()
                if now - self._last_sync >= self.fsync_secs:
                    os.fsync(self._fh.fileno())
                    self._last_sync = now
            return self._end
        except OSError as exc:
            self._fail(exc, batch)
            return None

    def close(self) -> None:
        """Fsync and close the file (idempotent, never raises)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            os.fsync(fh.fileno())
        except OSError:
            pass
        try:
            fh.close()
        except OSError:
            pass


def read_batches(path: str, start: int = 0) -> Iterator[tuple[Batch, int]]:
    """Every complete, intact record of the log file `path` from byte offset `start` (0: the
    beginning), as a `Batch`, with the offset just after it (where a later call resumes)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return
    for kind, header, body, end in fmt.iter_records(data, start):
        batch = Batch()
        if kind == b"S":
            names, idx, steps, values, walls = fmt.decode_scalars(header, body)
            batch.scalars = list(zip([names[i] for i in idx.tolist()], steps.tolist(), values.tolist(),
                                     walls.tolist()))
        elif kind == b"H":
            batch.histograms = [HistogramRecord(item["name"], int(item["step"]), edges, counts,
                                                float(item.get("wall", 0.0)))
                                for item, edges, counts in fmt.decode_histograms(header, body)]
        elif kind == b"M":
            batch.media = [_media_record(item) for item in header["items"]]
        yield batch, end


def _media_record(item: dict[str, Any]) -> MediaRecord:
    kind = item.get("kind", "")
    data = {"text": item.get("text") or ""} if kind == "graph" else item.get("text") if kind == "text" else None
    return MediaRecord(kind, item.get("name", ""), int(item.get("step", 0)), float(item.get("wall", 0.0)),
                       data=data, path=item.get("path"))
