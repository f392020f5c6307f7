"""A sink following the run's log: one `Follower` (and thread) per sink.

The writer appends every hand-off to ``events.alog`` first, then offers the same batch to each
follower with its byte range in the log. A follower delivers from memory while it keeps up (a
bounded window of batches) and from the file when it falls behind (`read_batches` from its
position), so a slow, failing or stalled sink costs no memory beyond its window, loses no point,
and never slows the log or another sink. Its position (the log offset up to which the sink has
everything) is recorded in ``sinks.json`` (`Positions`), so `autolog sync` can finish it later.
"""
from __future__ import annotations

import collections
import importlib
import json
import os
import threading
import time
from typing import Any, Callable

from autolog.pipeline import media as media_mod
from autolog.store.log import read_batches
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink
from autolog.store import format as store

WINDOW_BATCHES = 64  # batches a follower may hold in memory ...
WINDOW_POINTS = 500_000  # ... and scalar points, histogram bins and image bytes / 8 (the
# writer's own batch objects, shared by every follower: no copy)
SAVE_SECS = 1.0  # a follower records its position at most this often while it writes
POSITIONS_FILE = "sinks.json"


def sink_spec(sink: Sink) -> dict[str, Any]:
    """What `sinks.json` records to rebuild `sink` in `autolog sync`: its name, class and options
    (None when they cannot be written down: then the sink cannot be rebuilt)."""
    cls = type(sink)
    options = sink.options()
    try:
        json.dumps(options)
    except (TypeError, ValueError):
        options = None
    return {"name": sink.name, "class": f"{cls.__module__}:{cls.__qualname__}", "options": options,
            "syncable": bool(getattr(sink, "syncable", True))}


def build_sink(spec: dict[str, Any]) -> Sink:
    """The sink `spec` (from `sink_spec`) describes (ImportError/TypeError/ValueError if not)."""
    if spec.get("options") is None:
        raise ValueError(f"sink {spec.get('name')!r}: its options were not recorded (not JSON), "
                         f"it cannot be rebuilt")
    module, _, qualname = str(spec["class"]).partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Sink)) or "<locals>" in qualname:
        raise TypeError(f"{spec['class']} is not an importable Sink subclass")
    return obj(**spec["options"])


class Positions:
    """``<run>/sinks.json``: each sink's spec, log position and whether it has everything."""

    def __init__(self, run_dir: str, entries: list[dict[str, Any]] | None = None) -> None:
        self.path = os.path.join(run_dir, POSITIONS_FILE)
        self.entries: list[dict[str, Any]] = entries or []
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: str) -> "Positions":
        try:
            entries = store.read_json(os.path.join(run_dir, POSITIONS_FILE)).get("sinks", [])
        except (OSError, ValueError):
            entries = []
        return cls(run_dir, [e for e in entries if isinstance(e, dict)])

    def add(self, sink: Sink, offset: int = 0, mode: str | None = None) -> dict[str, Any]:
        """A new entry for `sink` (opened with ``RunInfo.mode`` `mode`), at log offset `offset`."""
        entry = {**sink_spec(sink), "mode": mode, "offset": offset, "done": False}
        with self._lock:
            self.entries.append(entry)
        return entry

    def update(self, entry: dict[str, Any], offset: int, done: bool) -> None:
        """Record a sink's position; positions only move forward (a late writer of an older
        position cannot undo a newer one)."""
        with self._lock:
            if offset < entry.get("offset", 0) or (entry.get("done") and not done):
                return
            entry.update(offset=offset, done=done)
            self._write()

    def save(self) -> None:
        """Write the file now (when the sinks are known, before the first record)."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        try:
            store.write_json_atomic(self.path, {"sinks": self.entries})
        except OSError:
            pass  # the store reports disk trouble; a stale position means a later re-sync


def _cost(batch: Batch) -> int:
    """A batch's weight in the window, in scalar points (a histogram bin, 8 bytes of an image)."""
    cost = len(batch.scalars) + sum(len(h.counts) for h in batch.histograms)
    if batch.media:
        cost += sum(int(getattr(m.data, "nbytes", 0) or 0) for m in batch.media) // 8
    return cost


def _raise(exc: BaseException) -> None:
    raise exc


class Follower:
    """Delivers the run's records to one sink on its own daemon thread, in log order."""

    def __init__(self, sink: Sink, info: RunInfo, positions: Positions, report: Callable[[str, str, BaseException], None],
                 start: int = 0, entry: dict[str, Any] | None = None,
                 note: Callable[[str], None] | None = None,
                 keep: Callable[[Batch, int], Batch] | None = None) -> None:
        self.sink, self.info, self.report, self.note = sink, info, report, note
        self.keep = keep  # what of a batch read from the file (and ending there) to deliver
        self.log_path = os.path.join(info.path, store.EVENTS_FILE)
        self.positions = positions
        self.entry = entry if entry is not None else positions.add(sink, start, info.mode)
        self.position = start  # the sink has every record of the log before this offset
        self.log_end = start
        self.window: collections.deque[tuple[Batch, int, int]] = collections.deque()
        self._points = 0
        self.cond = threading.Condition(threading.RLock())
        self.result: RunResult | None = None
        self.abandoned = False
        self.done = False
        self.failed = False  # the follower itself broke (not the sink): it delivers no more
        self.errors = 0
        self.first_error: str | None = None
        self.from_log = 0  # records read back from the file (the sink had fallen behind)
        self.counts = [0, 0, 0]  # scalar points, histograms, media delivered
        self.where: str | None = None  # where the sink says it writes (its `path`, once open)
        self._saved = 0.0
        self.opened = threading.Event()  # `open` has returned (or failed): `Run.backend` waits for it
        self.thread = threading.Thread(target=self._run, name=f"autolog-sink-{sink.name}", daemon=True)
        self.thread.start()

    # -- writer thread ----------------------------------------------------------------------
    def offer(self, batch: Batch, start: int, end: int) -> None:
        """The log now holds `batch` at [start, end): keep it in memory if there is room."""
        with self.cond:
            self.log_end = max(self.log_end, end)
            n = _cost(batch)
            if len(self.window) < WINDOW_BATCHES and self._points + n <= max(WINDOW_POINTS, n) \
                    and end >= self.position:
                self.window.append((batch, start, end))
                self._points += n
            self.cond.notify_all()

    def log_grew(self, end: int) -> None:
        """The log holds records up to `end` that were not offered (`autolog sync`, replay)."""
        with self.cond:
            self.log_end = max(self.log_end, end)
            self.cond.notify_all()

    def finish(self, result: RunResult) -> None:
        """The run ended: after the last record, close the sink with `result`."""
        with self.cond:
            self.result = result
            self.cond.notify_all()

    def caught_up(self, deadline: float | None) -> bool:
        """Wait until the sink has everything offered so far (and is closed, once finished);
        False when `deadline` (a `time.monotonic()` time; None: no limit) passed first."""
        with self.cond:
            while not (self.done or (self.result is None and self.position >= self.log_end and not self.window)):
                if self.failed or not self.thread.is_alive():
                    return self.done
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def record_position(self) -> None:
        """Write the sink's position to ``sinks.json`` now (after `caught_up`: it is exact)."""
        self.positions.update(self.entry, offset=self.position, done=False)

    def abandon(self) -> None:
        """Stop after the current call (the close timeout passed); the position stays recorded."""
        with self.cond:
            self.abandoned = True
            self.cond.notify_all()
        self._save(force=True)

    # -- the follower's thread ----------------------------------------------------------------
    def _call(self, what: str, fn: Callable, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except BaseException as exc:  # noqa: BLE001 -- a sink must never take the run down
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{what}: {type(exc).__name__}: {exc}"
                self.report(self.sink.name, what, exc)
            return False

    def _take(self) -> tuple[Batch, int] | str:
        """The next batch from memory, "file" when it must be read from the log, "end" or "stop"."""
        with self.cond:
            while self.position >= self.log_end and self.result is None and not self.abandoned \
                    and not (self.window and self.window[0][1] == self.position):
                self.cond.wait()
            if self.abandoned:
                return "stop"
            while self.window and self.window[0][2] <= self.position and self.window[0][1] != self.position:
                self._drop_head()
            if self.window and self.window[0][1] == self.position:
                batch, _start, end = self.window[0]
                self._drop_head()
                return batch, end
            return "file" if self.position < self.log_end else "end"

    def _drop_head(self) -> None:
        batch, _s, _e = self.window.popleft()
        self._points -= _cost(batch)

    def _advance(self, end: int) -> None:
        with self.cond:
            self.position = max(self.position, end)
            self.cond.notify_all()
        # abandoned at close while this write was in flight: record it at once, the process may
        # be about to exit (`autolog sync` would otherwise write this batch a second time)
        self._save(force=self.abandoned)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 -- reading the log failed: this sink stops here
            self._call("follow the log", _raise, exc)  # counted and told like a sink error
            with self.cond:
                self.failed = True  # `caught_up` stops waiting; the position stays recorded
                self.cond.notify_all()

    def _loop(self) -> None:
        try:
            opened = self._call("open", self.sink.open, self.info)
        finally:
            self.opened.set()
        where = getattr(self.sink, "path", None)
        self.where = where if isinstance(where, str) else None
        while True:
            item = self._take()
            if item == "stop":
                return
            if item == "end":
                break
            if isinstance(item, tuple):
                self._deliver(opened, item[0])
                self._advance(item[1])
                continue
            limit = self.log_end
            for batch, end in read_batches(self.log_path, self.position):
                if end > limit or self.abandoned:
                    break
                self.from_log += 1
                if self.keep is not None:
                    batch = self.keep(batch, end)
                self._deliver(opened, media_mod.load_media(batch, self.info.path, self.note))
                self._advance(end)
                with self.cond:
                    if self.window and self.window[0][1] == self.position:
                        break  # memory has the next one: back to it
            else:
                with self.cond:
                    if self.position < limit and not (self.window and self.window[0][1] == self.position):
                        self.position = limit  # unreadable tail (store errors): nothing more there
        if opened and self.result is not None:
            self._call("close", self.sink.close, self.result)
        self._save(force=True, done=True)  # recorded before anyone is told it is done
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def _deliver(self, opened: bool, batch: Batch) -> None:
        if opened:
            self._call("write", self.sink.write, batch)
        counts = self.counts
        counts[0] += len(batch.scalars)
        counts[1] += len(batch.histograms)
        counts[2] += len(batch.media)

    def _save(self, force: bool = False, done: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._saved >= SAVE_SECS:
            self._saved = now
            self.positions.update(self.entry, offset=self.position, done=done)

    def stats(self) -> dict[str, Any]:
        return {"errors": self.errors, "first_error": self.first_error, "read_from_log": self.from_log}


__all__ = ["Follower", "Positions", "sink_spec", "build_sink", "POSITIONS_FILE"]
