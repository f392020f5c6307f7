"""The writer: the run's log first, then every sink follows it.

One writer thread takes the staged hand-offs in order, resolves each to host values, runs the
writer-side processors (media files, the capture's non-finite and timing processors), empties
the batch's control fields, and appends it to the run's ``events.alog`` (`EventLog`) -- the
system of record -- before anything else happens to it. Then it offers the batch to one
`Follower` per sink, which delivers it at the sink's own pace (see `autolog.pipeline.follower`).

Nothing is dropped for the log: hand-offs wait in memory for the writer. Past `max_pending_mb`
of pending hand-offs (the disk cannot keep up) the training thread waits at the hand-off until
the writer catches up -- the only place autolog ever blocks training; counted in
``meta["handoff_waits"]`` and told once. A failure of a processor or a conversion costs only that
record (counted in ``meta["writer_errors"]`` / ``meta["dropped_values"]``, told once); a sink's
failure costs only that sink (``meta["sink_errors"]``).
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from typing import Any, Callable

from autolog.store.log import EventLog
from autolog.pipeline.follower import Follower, Positions
from autolog.core.redact import scrub
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink

DEFAULT_MAX_PENDING_MB = 256.0
# After writing, the writer rests this long before it looks at the queue again, so that the
# hand-offs of a fast loop are written a few at a time: each wake-up of the writer thread costs
# the training thread far more than the work itself (the two take turns with the GIL). Anyone
# waiting for the log (flush with wait, close, a full queue) cuts the rest short.
WRITER_REST_SECS = 0.5


class _Close:
    def __init__(self, make_result: Callable[[], RunResult]) -> None:
        self.make_result = make_result


class Pipeline:
    """Staged hand-offs in; the log written, then sink calls out, on threads of their own."""

    def __init__(self, sinks: list[Sink], info: RunInfo, prepare: Callable[[Batch], None] | None = None,
                 fsync_secs: float = 1.0, max_pending_mb: float = DEFAULT_MAX_PENDING_MB) -> None:
        self.info = info
        self.prepare = prepare  # runs on the writer thread before the batch is logged
        self.max_pending = int(max_pending_mb * 2**20)
        self._reported: set[str] = set()
        self.log = EventLog(info.path, fsync_secs)
        self.log_end = self._start_offset()
        self.positions = Positions(info.path)
        self.followers = [Follower(s, info, self.positions, self._report, start=self.log_end) for s in sinks]
        self.positions.save()
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition(threading.RLock())  # re-entrant: a signal handler may hand off
        self._pending_bytes = 0
        self._idle = False  # the writer waits for a hand-off (not resting): submit wakes it
        self._hurry = 0  # threads waiting for the writer: it does not rest
        self._submitted = 0
        self._logged = 0
        self.handoff_waits = 0
        self.handoff_wait_secs = 0.0
        self.writer_errors = 0
        self.first_writer_error: str | None = None
        self.dropped_values = 0
        # The writer thread's CPU time on hand-offs (resolve, processors, encode, append, offers):
        # a proxy for how long it holds the GIL, which the training thread then waits for.
        # Replaced whole after each hand-off, so a reader on another thread gets a consistent pair.
        self.writer_time: dict[str, Any] = {"handoffs": 0, "thread_cpu_s": 0.0}
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="autolog-writer", daemon=True)
        self.thread.start()

    def _start_offset(self) -> int:
        import os

        try:
            return os.path.getsize(self.log.path)
        except OSError:
            return 0

    # -- reporting ----------------------------------------------------------------------------
    def _report(self, sink: str, what: str, exc: BaseException) -> None:
        if sink in self._reported:
            return
        self._reported.add(sink)
        detail = scrub("".join(traceback.format_exception_only(type(exc), exc)).strip())  # no secret on stderr
        print(f"autolog: sink {sink!r} failed in {what}() and is isolated; the run, its log and the "
              f"other sinks go on. {detail}", file=sys.stderr)

    def writer_error(self, what: str, exc: BaseException) -> None:
        """A processor or conversion failed on the writer thread: it cost one record; count it,
        tell it once."""
        self.writer_errors += 1
        if self.first_writer_error is None:
            self.first_writer_error = scrub(f"{what}: {type(exc).__name__}: {exc}")  # meta and stderr
            print(f"autolog: the writer could not handle a record ({self.first_writer_error}); that "
                  f"record is skipped, the run goes on (counted in meta['writer_errors'])", file=sys.stderr)

    # -- training thread ------------------------------------------------------------------------
    def submit(self, staged: Any) -> None:
        """Hand a staged batch on. Waits only while more than `max_pending_mb` is pending."""
        with self._cond:
            if self.closed:
                return
            self._queue.append(staged)
            self._submitted += 1
            self._pending_bytes += int(getattr(staged, "nbytes", 0))
            if self._idle:
                self._cond.notify_all()
            if self._pending_bytes > self.max_pending and self.thread.is_alive():
                self._wait_for_room()

    def _wait_for_room(self) -> None:
        if self.handoff_waits == 0:
            print(f"autolog: the run's log cannot keep up (slow disk?): more than "
                  f"{self.max_pending / 2**20:g} MB of hand-offs are pending, so training waits at "
                  f"the hand-off until they are written (counted in meta['handoff_waits']; raise "
                  f"max_pending_mb to wait less)", file=sys.stderr)
        self.handoff_waits += 1
        self._hurry += 1
        self._cond.notify_all()  # (lets a test see the wait begin)
        started = time.monotonic()
        try:
            while self._pending_bytes > self.max_pending and self.thread.is_alive():
                self._cond.wait(1.0)
        finally:
            self._hurry -= 1
        self.handoff_wait_secs += time.monotonic() - started

    # -- writer thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        rest_until = 0.0
        while True:
            with self._cond:
                while True:  # rest (see WRITER_REST_SECS), then wait for a hand-off
                    if self._hurry and self._queue or self.closed:  # someone waits for a hand-off
                        break
                    left = rest_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                while not self._queue:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                item = self._queue[0]
            if isinstance(item, _Close):
                self._finish(item)
                return
            started = time.thread_time()
            try:
                self._write(item)
            except Exception as exc:  # noqa: BLE001 -- the writer thread must live on
                self.writer_error("write", exc)
            finally:
                spent = time.thread_time() - started
                with self._cond:
                    self.writer_time = {"handoffs": self.writer_time["handoffs"] + 1,
                                        "thread_cpu_s": self.writer_time["thread_cpu_s"] + spent}
                    self._queue.popleft()
                    self._pending_bytes -= int(getattr(item, "nbytes", 0))
                    self._logged += 1
                    self._cond.notify_all()
                    if not self._queue:
                        rest_until = time.monotonic() + WRITER_REST_SECS

    def _write(self, staged: Any) -> None:
        try:
            batch = staged.resolve()
        except Exception as exc:  # noqa: BLE001 -- a conversion bug costs this hand-off, not the run
            self.writer_error("resolve", exc)
            return
        if self.prepare is not None:
            try:
                self.prepare(batch)
            except Exception as exc:  # noqa: BLE001
                self.writer_error("prepare", exc)
        self.dropped_values += batch.dropped_values
        batch.public()  # control fields never reach the log or a sink
        start = self.log_end
        end = self._append(batch)
        if end is not None:
            self.log_end = end
        if self.followers:
            batch.materialize()  # the sinks get points; the log took the columns as they are
        for follower in self.followers:
            follower.offer(batch, start, self.log_end)

    def _append(self, batch: Batch) -> int | None:
        """Append to the log (which leaves out, and counts, values it cannot store); never raises."""
        try:
            return self.log.append(batch)
        except Exception as exc:  # noqa: BLE001 -- the log must go on for the next batch
            self.writer_error("log", exc)
            return None

    def _finish(self, item: _Close) -> None:
        try:
            result = item.make_result()
        except Exception as exc:  # noqa: BLE001
            self.writer_error("result", exc)
            result = RunResult("failed", {}, {}, {})
        self.log.close()
        for follower in self.followers:
            follower.finish(result)
        with self._cond:
            self._queue.popleft()
            self._logged += 1
            self._cond.notify_all()

    # -- waiting ------------------------------------------------------------------------------------
    def _wait_logged(self, count: int, deadline: float | None) -> bool:
        with self._cond:
            self._hurry += 1
            self._cond.notify_all()  # a resting writer goes on at once
            try:
                while self._logged < count and self.thread.is_alive():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left if left is not None else 1.0)
                return self._logged >= count
            finally:
                self._hurry -= 1

    def wait(self, timeout: float, sinks: bool = True) -> bool:
        """Block until the log and every sink have every batch submitted so far (or `timeout`);
        the positions in ``sinks.json`` are then exact. sinks=False: the log only."""
        deadline = time.monotonic() + timeout
        if not self._wait_logged(self._submitted, deadline):
            return False
        if not sinks:
            return True
        ok = True
        for follower in self.followers:
            if follower.caught_up(deadline):
                follower.record_position()  # so a kill -9 after this costs no duplicate
            else:
                ok = False
        return ok

    def close(self, make_result: Callable[[], RunResult], timeout: float) -> bool:
        """Write everything left to the log (no time limit: the log is never dropped), then give
        the sinks `timeout` seconds together to catch up and close. A sink still behind is left
        where it is (its position stays in ``sinks.json``; `autolog sync` finishes it)."""
        with self._cond:
            if self.closed:
                return True
            self.closed = True
            self._queue.append(_Close(make_result))
            self._submitted += 1
            self._cond.notify_all()
        self._wait_logged(self._submitted, None)
        deadline = time.monotonic() + timeout
        ok = True
        for follower in self.followers:
            if not follower.caught_up(deadline):
                follower.abandon()
                ok = False
        return ok

    def timed_out(self) -> list[str]:
        """Names of the sinks that had not finished at close."""
        return [f.sink.name for f in self.followers if not f.done]

    def stats(self) -> dict[str, Any]:
        return {f.sink.name: f.stats() for f in self.followers}

    def meta(self) -> dict[str, Any]:
        """What the run records about its pipeline in ``meta`` (only what happened)."""
        out: dict[str, Any] = {}
        problems = {k: v for k, v in self.stats().items() if v["errors"]}
        if problems:
            out["sink_errors"] = problems
        late = self.timed_out()
        if late:
            out["sinks_timed_out"] = late
        if self.writer_errors:
            out["writer_errors"] = {"count": self.writer_errors, "first_error": self.first_writer_error}
        if self.dropped_values:
            out["dropped_values"] = self.dropped_values
        if self.handoff_waits:
            out["handoff_waits"] = {"count": self.handoff_waits, "seconds": round(self.handoff_wait_secs, 3)}
        return out  # the log's own errors and dropped values: the run's store meta
