"""The record pipeline: a bounded queue of staged batches, one writer thread that resolves each
to host values, and one delivery thread per sink so that a stalled sink never starves the others.

Nothing here blocks the training thread. When the writer's queue is full the run postpones its
hand-off (it keeps buffering, nothing is lost); when one sink's queue is full, that sink loses
its oldest batch (counted in `meta["sink_errors"]`), the others get everything. Sink errors are
caught, counted, reported once on stderr, and kept for `meta`.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from typing import Any, Callable

from autolog.core.redact import scrub
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink

QUEUE_SIZE = 256  # batches; a batch is everything since the previous hand-off


class _BoundedQueue:
    """A deque that drops its oldest item when full and counts the drops; `done` counts items
    taken and fully handled, so a caller can wait for everything put so far."""

    def __init__(self, size: int) -> None:
        self.items: collections.deque = collections.deque()
        self.size = size
        self.cond = threading.Condition(threading.Lock())
        self.put_count = 0
        self.done_count = 0
        self.dropped = 0
        self.closed = False

    def full(self) -> bool:
        return len(self.items) >= self.size

    def put(self, item: Any, force: bool = False) -> None:
        with self.cond:
            if len(self.items) >= self.size and not force:
                self.items.popleft()
                self.dropped += 1
                self.done_count += 1
            self.items.append(item)
            self.put_count += 1
            self.cond.notify_all()

    def get(self) -> Any:
        """The next item, or None once closed and empty."""
        with self.cond:
            while not self.items and not self.closed:
                self.cond.wait()
            return self.items.popleft() if self.items else None

    def task_done(self) -> None:
        with self.cond:
            self.done_count += 1
            self.cond.notify_all()

    def wait_for(self, count: int, deadline: float) -> bool:
        with self.cond:
            while self.done_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Close:
    def __init__(self, make_result: Callable[[], RunResult]) -> None:
        self.make_result = make_result


class SinkWorker:
    """Delivers batches to one sink on its own daemon thread."""

    def __init__(self, sink: Sink, info: RunInfo, report: Callable[[str, str, BaseException], None]) -> None:
        self.sink = sink
        self.info = info
        self.report = report
        self.queue = _BoundedQueue(QUEUE_SIZE)
        self.errors = 0
        self.first_error: str | None = None
        self.opened = False
        self.thread = threading.Thread(target=self._loop, name=f"autolog-sink-{sink.name}", daemon=True)
        self.thread.start()

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

    def _loop(self) -> None:
        self.opened = self._call("open", self.sink.open, self.info)
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if isinstance(item, RunResult):
                    if self.opened:
                        self._call("close", self.sink.close, item)
                    return
                if self.opened:
                    self._call("write", self.sink.write, item)
            finally:
                self.queue.task_done()

    def stats(self) -> dict[str, Any]:
        return {"errors": self.errors, "first_error": self.first_error, "dropped_batches": self.queue.dropped}


class Pipeline:
    """Staged batches in, sink calls out, on threads of its own."""

    def __init__(self, sinks: list[Sink], info: RunInfo, prepare: Callable[[Batch], None] | None = None) -> None:
        self.info = info
        self.prepare = prepare  # runs on the writer thread before fan-out (e.g. writes media files)
        self._reported: set[str] = set()
        self.workers = [SinkWorker(s, info, self._report) for s in sinks]
        self.queue = _BoundedQueue(QUEUE_SIZE)
        self.writer_errors = 0
        self.thread = threading.Thread(target=self._loop, name="autolog-writer", daemon=True)
        self.thread.start()
        self.closed = False

    def _report(self, sink: str, what: str, exc: BaseException) -> None:
        if sink in self._reported:
            return
        self._reported.add(sink)
        detail = scrub("".join(traceback.format_exception_only(type(exc), exc)).strip())  # no secret on stderr
        print(f"autolog: sink {sink!r} failed in {what}() and is isolated; the run and the other "
              f"sinks go on. {detail}", file=sys.stderr)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if isinstance(item, _Close):
                    result = item.make_result()
                    for w in self.workers:
                        w.queue.put(result)
                    continue
                batch = item.resolve()
                if self.prepare is not None:
                    self.prepare(batch)
                for w in self.workers:
                    w.queue.put(batch)
            except BaseException as exc:  # noqa: BLE001
                self.writer_errors += 1
                self._report("writer", "resolve", exc)
            finally:
                self.queue.task_done()

    def has_room(self) -> bool:
        """False while the writer is behind: the run then keeps buffering (no loss, no block)."""
        return not self.queue.full()

    def submit(self, staged: Any) -> None:
        """Hand a staged batch on; never blocks."""
        if not self.closed:
            self.queue.put(staged, force=True)

    def wait(self, timeout: float) -> bool:
        """Block until every sink has handled every batch submitted so far (or `timeout`)."""
        deadline = time.monotonic() + timeout
        if not self.queue.wait_for(self.queue.put_count, deadline):
            return False
        ok = True
        for w in self.workers:
            ok = w.queue.wait_for(w.queue.put_count, deadline) and ok
        return ok

    def close(self, make_result: Callable[[], RunResult], timeout: float) -> bool:
        """Deliver the run's result to every sink and wait for them, all sharing one deadline.

        `make_result` runs on the writer thread after every earlier batch was resolved, so the
        result can summarise all of them."""
        self.closed = True
        self.queue.put(_Close(make_result), force=True)
        ok = self.wait(timeout)
        self.queue.close()
        for w in self.workers:
            w.queue.close()
        return ok

    def stats(self) -> dict[str, Any]:
        return {w.sink.name: w.stats() for w in self.workers}
