"""Test helpers shipped with autolog: an in-memory sink and a pytest fixture.

    def test_my_training(autolog_run):        # with `pytest_plugins = ["autolog.testing"]`
        train()                              # joins the fixture's run
        assert autolog_run.sink.scalars("train/loss")
"""
from __future__ import annotations

import threading
from typing import Any, Iterator

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult
from autolog.sinks.base import Sink


class MemorySink(Sink):
    """Keeps every record it receives, in order; thread-safe to read while a run writes."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.info: RunInfo | None = None
        self.batches: list[Batch] = []
        self.result: RunResult | None = None
        self.config: dict[str, Any] = {}

    def open(self, run: RunInfo) -> None:
        with self._lock:
            self.info = run
            self.config = dict(run.config)

    def write(self, batch: Batch) -> None:
        with self._lock:
            self.batches.append(batch)
            if batch.config:
                self.config.update(batch.config)

    def close(self, result: RunResult) -> None:
        with self._lock:
            self.result = result

    def points(self) -> list[tuple[str, int, float, float]]:
        """Every scalar point received, in arrival order."""
        with self._lock:
            return [p for b in self.batches for p in b.scalars]

    def scalars(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one scalar, in arrival order."""
        return [(step, value) for n, step, value, _w in self.points() if n == name]

    def names(self) -> set[str]:
        return {p[0] for p in self.points()}

    def histograms(self, name: str | None = None) -> list[HistogramRecord]:
        with self._lock:
            return [h for b in self.batches for h in b.histograms if name is None or h.name == name]

    def media(self, kind: str | None = None) -> list[MediaRecord]:
        with self._lock:
            return [m for b in self.batches for m in b.media if kind is None or m.kind == kind]


class RaisingSink(Sink):
    """A sink that fails on every call (failure injection)."""

    name = "raising"

    def __init__(self, where: tuple[str, ...] = ("open", "write", "close")) -> None:
        self.where = where
        self.calls = 0

    def _fail(self, what: str) -> None:
        self.calls += 1
        if what in self.where:
            raise RuntimeError(f"injected failure in {what}")

    def open(self, run: RunInfo) -> None:
        self._fail("open")

    def write(self, batch: Batch) -> None:
        self._fail("write")

    def close(self, result: RunResult) -> None:
        self._fail("close")


class StallingSink(Sink):
    """A sink whose `write` blocks until `release()` (failure injection).

    pid: stall only in that process (None: in every process), so that `autolog sync`, which
    rebuilds the sink from its options in another process, finishes it. inner: a sink name
    (with `inner_options`) that receives every call when not stalling -- a stalled TensorBoard
    or W&B sink, say."""

    name = "stalling"

    def __init__(self, pid: int | None = None, inner: str | None = None,
                 inner_options: dict[str, Any] | None = None) -> None:
        self.pid, self.inner_name, self.inner_options = pid, inner, dict(inner_options or {})
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.writes = 0
        self.inner: Sink | None = None
        if inner is not None:
            from autolog.sinks import sink_class

            self.inner = sink_class(inner)(**self.inner_options)

    def _stalls(self) -> bool:
        import os

        return self.pid is None or self.pid == os.getpid()

    def open(self, run: RunInfo) -> None:
        if self.inner is not None:
            self._stall()  # before the backend starts: a stalled W&B never initialises
            self.inner.open(run)

    def _stall(self) -> None:
        if self._stalls():
            self.entered.set()
            self.gate.wait()

    def write(self, batch: Batch) -> None:
        self._stall()
        self.writes += 1
        if self.inner is not None:
            self.inner.write(batch)

    def close(self, result: RunResult) -> None:
        if self.inner is not None:
            self.inner.close(result)

    def release(self) -> None:
        self.gate.set()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["gate"] = state["entered"] = None  # events do not pickle; rebuilt below
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.gate, self.entered = threading.Event(), threading.Event()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def autolog_run(tmp_path: Any) -> Iterator[Any]:
        """An open run writing to `tmp_path` with a `MemorySink` (as `.sink`) and the local store."""
        from autolog import api

        sink = MemorySink()
        run = api.run(project="test", dir=str(tmp_path), sinks=["local", sink], flush_secs=3600)
        run.sink = sink  # type: ignore[attr-defined]
        try:
            yield run
        finally:
            run.finish()
