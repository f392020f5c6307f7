"""The embedded local store as a sink: every batch appended to the run's ``events.alog``.

The file itself is `autolog.store.log.EventLog`; see `autolog.store` for the format.
`autolog.read_run` reads it back, also while the run is still writing.
"""
from __future__ import annotations

from typing import Any

from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink
from autolog.store.log import EventLog


class LocalSink(Sink):
    """Appends scalars, histograms and the media index to the run's record log.

    Each batch is one append, so a process killed after a hand-off reached this sink loses none
    of it. ``fsync_secs`` bounds what an OS crash or power loss can lose: the file is fsynced at
    most that often (0: after every batch). Write errors (a full disk) never raise: they are
    kept in `errors`.
    """

    name = "local"

    def __init__(self, fsync_secs: float = 1.0) -> None:
        if isinstance(fsync_secs, bool) or not isinstance(fsync_secs, (int, float)) or not fsync_secs >= 0:
            raise ValueError(f"LocalSink: fsync_secs: expected a number of seconds >= 0, got {fsync_secs!r}")
        self.fsync_secs = float(fsync_secs)
        self.log: EventLog | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"fsync_secs": self.fsync_secs, "log": None}  # a copy starts unopened

    @property
    def errors(self) -> dict[str, Any]:
        return self.log.errors if self.log is not None else {}

    def open(self, run: RunInfo) -> None:
        self.log = EventLog(run.path, self.fsync_secs)

    def write(self, batch: Batch) -> None:
        if self.log is not None:
            self.log.append(batch)

    def close(self, result: RunResult) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None  # a batch after close goes nowhere
