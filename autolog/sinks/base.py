"""The one small base class every sink implements."""
from __future__ import annotations

from autolog.pipeline.records import Batch, RunInfo, RunResult


class Sink:
    """Receives a run's records on a writer thread, never on the training thread.

    Subclasses override any of the three methods. `open` is called once before the first
    batch, `write` once per hand-off (in order), `close` once at the end with the final status.
    A method that raises is reported once and the sink is isolated; the run and the other sinks
    go on. Third-party sinks register a subclass under the entry-point group ``autolog.sinks``.
    """

    #: short name used in messages and by `sinks=("name", ...)`
    name: str = "sink"

    def open(self, run: RunInfo) -> None:
        """The run started: `run.config` is final unless a later batch carries `config`."""

    def write(self, batch: Batch) -> None:
        """Scalars, histograms, media and config updates handed off since the last call."""

    def close(self, result: RunResult) -> None:
        """The run ended with `result.status`; flush and release everything."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
