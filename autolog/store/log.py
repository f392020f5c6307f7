"""The run's record log, ``events.alog``: `EventLog` appends batches, `read_batches` reads them back.

The byte format is described in `autolog.store`; framing and the codec live in
`autolog.store.format`. This module owns the file: opening, appending, fsync and faults.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord
from autolog.store import format as fmt
from autolog.store.files import fsync_dir, tell_once


def _media_index(batch: Batch) -> list[dict[str, Any]]:
    """The media index entries of a batch. Images and figures are already PNG files; one whose
    file could not be written (``path`` None, counted by `RunFiles.write_png`) is not indexed."""
    return [{"kind": m.kind, "name": m.name, "step": m.step, "wall": m.wall_time, "path": m.path,
             "text": m.data if m.kind == "text" else (m.data or {}).get("text") if m.kind == "graph" else None}
            for m in batch.media if m.path is not None or m.kind not in ("image", "figure")]


def encode(batch: Batch) -> bytes:
    """The payload of `batch` (empty when it holds nothing the log keeps)."""
    return fmt.encode_batch(batch.scalars, batch.histograms, _media_index(batch), batch.step,
                            batch.prog_bar, batch.config, batch.columns)


def _encodes(batch: Batch) -> bool:
    try:
        encode(batch)
        return True
    except Exception:  # noqa: BLE001 -- whatever the codec refuses
        return False


def _plain_point(point: Any) -> bool:
    """True for a point the codec surely takes alone: a string name, an int step in int64, float
    value and wall time (what every resolved hand-off holds), so that finding the one bad value
    of a big batch costs an encode only for the points that are not plainly good."""
    return (type(point) is tuple and len(point) == 4 and type(point[0]) is str and type(point[1]) is int
            and 0 <= point[1] < 2 ** 63 and type(point[2]) is float and type(point[3]) is float)


def keep_storable(batch: Batch) -> int:
    """Remove from `batch` the values the codec refuses (a step beyond int64, a name that is not
    a string, an unserialisable config, ...), each tried alone; returns how many: one bad value
    costs only itself."""
    batch.materialize()  # each point tried alone
    before = len(batch.scalars) + len(batch.histograms) + len(batch.media) + (batch.config is not None)
    batch.scalars = [p for p in batch.scalars if _plain_point(p) or _encodes(Batch(scalars=[p]))]
    batch.histograms = [h for h in batch.histograms if _encodes(Batch(histograms=[h]))]
    batch.media = [m for m in batch.media if _encodes(Batch(media=[m]))]
    if batch.config is not None and not _encodes(Batch(config=batch.config)):
        batch.config = None
    batch.prog_bar = tuple(n for n in batch.prog_bar if type(n) is str)
    if not _encodes(Batch(scalars=[("x", 0, 0.0, 0.0)], step=batch.step)):
        batch.step = 0
    return before - (len(batch.scalars) + len(batch.histograms) + len(batch.media) + (batch.config is not None))


class _Syncer:
    """Fsyncs a file descriptor on a thread of its own, at most every `secs` seconds and only
    after a write, so that a slow fsync (an NFS, a busy disk) never holds up an append."""

    def __init__(self, fd: int, secs: float, new_dir: str | None = None) -> None:
        self.fd, self.secs = fd, secs
        self.new_dir = new_dir  # the directory of a file just created: fsynced once, first
        self.cond = threading.Condition()
        self.dirty = self.closed = False
        self.idle = False  # waiting for a write (not resting after an fsync): a write wakes it
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._loop, name="autolog-fsync", daemon=True)
        self.thread.start()

    def wrote(self) -> None:
        with self.cond:
            self.dirty = True
            if self.idle:  # (resting after an fsync, it looks at `dirty` when the rest ends)
                self.cond.notify()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.dirty and not self.closed:
                    self.idle = True
                    self.cond.wait()
                self.idle = False
                if self.closed:
                    return
                self.dirty = False
            if self.new_dir is not None:
                fsync_dir(self.new_dir or ".")
                self.new_dir = None
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.error = exc
            with self.cond:  # at most one fsync per `secs`; only close() cuts the rest short
                rest_until = time.monotonic() + self.secs
                while not self.closed:
                    left = rest_until - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()


class EventLog:
    """Appends batches to ``<run_dir>/events.alog``, one framed record each; never raises.

    A process killed after `append` returned loses nothing of that batch (the record is in the
    OS's hands); ``fsync_secs`` bounds what an OS crash or power loss can lose: a background
    thread fsyncs the file at most that often, so a slow fsync never delays an append (0: fsync
    inside every append). An ``OSError`` (a full disk, a vanished directory) costs the batch
    being appended: a partly written record is cut off again, the loss is counted in `errors`
    (``count``, ``first_error``, ``lost``) and told once on stderr, and the next append tries
    again, so writing resumes when space returns. A value the log cannot store (a step beyond
    int64) is removed from the batch given (so no follower sees what the log does not hold) and
    counted in `dropped_values`; the rest of the batch is appended.

    Opening an existing log continues it: the sequence numbers go on, and a torn record left by
    a killed writer is skipped by the reader.
    """

    def __init__(self, run_dir: str, fsync_secs: float = 1.0) -> None:
        self.path = os.path.join(run_dir, fmt.EVENTS_FILE)
        self.fsync_secs = fsync_secs
        self.errors: dict[str, Any] = {}
        self.dropped_values = 0  # values left out of their batch because the log cannot store them
        self._fd: int | None = None
        self._end = 0
        self._seq = 0
        self._syncer: _Syncer | None = None
        self._closed = False
        self._new_file = False
        self._lock = threading.Lock()  # append and close may come from different threads
        try:
            self._open()
        except OSError as exc:
            self._fail(exc, Batch())  # retried at the next append

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < len(fmt.MAGIC):
                os.ftruncate(fd, 0)  # empty, or a header cut short
                self._write_all(fd, fmt.MAGIC)
                size = len(fmt.MAGIC)
                self._new_file = True  # its name is made durable with its first fsync
            else:
                with open(self.path, "rb") as fh:
                    data = fh.read()
                if data.startswith(fmt.MAGIC_V1):
                    raise OSError(f"{self.path} is a version-1 log; it is read, never appended to")
                stats = fmt.ScanStats()
                for _ in fmt.iter_records(data, 0, stats):
                    pass
                self._seq = stats.last_seq + 1
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._end = fd, size
        if self.fsync_secs > 0:
            self._syncer = _Syncer(fd, self.fsync_secs, os.path.dirname(self.path) if self._new_file else None)
        elif self._new_file:
            fsync_dir(os.path.dirname(self.path) or ".")

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a write may be partial
            view = view[os.write(fd, view):]

    def _fail(self, exc: Exception, batch: Batch) -> None:
        tell_once(self.errors, self.path, exc, {"batches": 1, "scalars": len(batch.scalars),
                                                "histograms": len(batch.histograms), "media": len(batch.media)}
                  if batch else None)

    def append(self, batch: Batch) -> int | None:
        """Append one batch; returns the file's end offset after it, or None if it was lost (or
        the log is closed)."""
        with self._lock:
            return self._append(batch) if not self._closed else None

    def _append(self, batch: Batch) -> int | None:
        try:
            payload = encode(batch)
        except Exception:  # noqa: BLE001 -- a value the codec cannot take costs only itself
            self.dropped_values += keep_storable(batch)
            try:
                payload = encode(batch)
            except Exception as exc:  # noqa: BLE001
                self._fail(ValueError(f"cannot encode the batch: {type(exc).__name__}: {exc}"), batch)
                return None
        try:
            if self._fd is None:
                self._open()
            if payload:
                record = fmt.encode_frame(self._seq, payload)
                try:
                    self._write_all(self._fd, record)
                except OSError:
                    self._cut_back()
                    raise
                self._seq += 1
                self._end += len(record)
        except OSError as exc:
            self._fail(exc, batch)
            return None
        if payload:
            self._sync()
        return self._end

    def _sync(self) -> None:
        if self._syncer is not None:
            self._syncer.wrote()
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:  # the record is written; only its durability is in doubt
            self._fail(exc, Batch())

    def _cut_back(self) -> None:
        """Remove a record written only in part; if that fails too, the reader skips it."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            try:
                self._end = os.fstat(self._fd).st_size  # the next record starts after the torn one
            except OSError:
                pass

    def close(self) -> None:
        """Fsync and close the file (idempotent, never raises)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._closed = True
        fd, self._fd = self._fd, None
        if self._syncer is not None:
            self._syncer.stop()
            if self._syncer.error is not None:
                self._fail(self._syncer.error, Batch())
            self._syncer = None
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail(exc, Batch())
        try:
            os.close(fd)
        except OSError as exc:
            self._fail(exc, Batch())


READ_CHUNK = 16 << 20  # a follower catching up reads the log this much at a time


def read_batches(path: str, start: int = 0, stats: fmt.ScanStats | None = None,
                 chunk: int = READ_CHUNK) -> Iterator[tuple[Batch, int]]:
    """Every complete, intact record of the log file `path` from byte offset `start` (0: the
    beginning), as a `Batch`, with the offset just after it (where a later call resumes).

    Torn, corrupt or ill-formed records are skipped (counted in `stats` when given); a record
    still being written ends the iteration: read again from the last offset to get it. The file
    is read `chunk` bytes at a time (more for a bigger record), so catching up on a long log
    costs no more memory than that."""
    stats = stats if stats is not None else fmt.ScanStats()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        if fh.read(len(fmt.MAGIC)) == fmt.MAGIC_V1:
            fh.seek(0)
            yield from _batches(fmt.iter_records(fh.read(), start, stats))
            return
        pos = max(start, len(fmt.MAGIC))
        while True:
            fh.seek(pos)
            data = fh.read(chunk)
            final = len(data) < chunk or not fh.read(1)
            yield from _batches(fmt.iter_records(data, start, stats, base=pos, final=final))
            if final:
                return
            if stats.resume == pos:
                chunk *= 2  # one record bigger than the chunk
            pos = stats.resume


def _batches(records: Iterator[tuple[fmt.Record, int]]) -> Iterator[tuple[Batch, int]]:
    for record, end in records:
        names = record.names
        batch = Batch(step=record.step, prog_bar=record.prog_bar, config=record.config)
        if len(record.keys):
            batch.scalars = list(zip([names[i] for i in record.keys.tolist()], record.steps.tolist(),
                                     record.values.tolist(), record.walls.tolist()))
        batch.histograms = [HistogramRecord(item["name"], item["step"], edges, counts, float(item.get("wall", 0.0)))
                            for item, edges, counts in record.histograms]
        batch.media = [_media_record(item) for item in record.media]
        yield batch, end


def _media_record(item: dict[str, Any]) -> MediaRecord:
    kind = item["kind"]
    data = {"text": item["text"] or ""} if kind == "graph" else item["text"] if kind == "text" else None
    return MediaRecord(kind, item["name"], item["step"], item["wall"], data=data, path=item["path"])
