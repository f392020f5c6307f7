"""`RunPort`: what the automatic capture may ask of a run, and nothing more.

The capture (`autolog.capture`) records into the run and advances its step through this narrow
surface; it never reads a run's private attributes. Both `autolog.core.run.Run` and the
disabled/rank > 0 stand-ins implement it. This module imports nothing from the run."""
from __future__ import annotations

from typing import Any, Callable, Protocol


class RunPort(Protocol):
    """The run as the capture sees it."""

    settings: Any  # log_every, capture, sync_dist, ... (`autolog.core.settings.Settings`)
    meta: dict[str, Any]  # the run's record; the capture adds findings (optimizers, errors)
    capture: Any  # the run's capture, set by it (None: none)
    buffer: Any  # `autolog.pipeline.buffer.RunBuffer`: rows and records pending a hand-off
    flush_count: int  # hand-offs so far
    dist: Any  # `autolog.core.distributed.DistContext`

    @property
    def step(self) -> int:
        """Steps completed in the run."""

    @property
    def is_follower(self) -> bool:
        """A rank other than 0: it records nothing of its own."""

    @property
    def finished(self) -> bool:
        """Whether the run has ended (or is ending)."""

    def advance_step(self) -> None:
        """The run's step is complete: count it; hand off every `log_every` steps."""

    def log_synced(self, name: str, step: int, value: Any, reduce: str = "mean") -> None:
        """A value reduced across ranks at the next reduction point."""

    def on_handoff(self, hook: Callable[[Any], None]) -> None:
        """`hook(run)` on the training thread just before each hand-off stages the buffer."""

    def on_prepare(self, hook: Callable[[Any], None]) -> None:
        """`hook(batch)` on the writer thread with each resolved batch, before the log."""

    def on_finish(self, hook: Callable[[Any], None]) -> None:
        """`hook(run)` when the run ends, before its last hand-off (last added, first called)."""

    def add_reducer(self, reducer: Any) -> None:
        """A reducer whose ``pending()`` ones run ``reduce(coordinator, device, synced)`` on every
        rank at each reduction point (sharded watch statistics)."""

    def loader_epoch(self, start_step: int | None = None) -> None:
        """The training DataLoader's pass begins (`start_step`: given once, when the loader is
        recognised, the step of its first iteration)."""

    def media(self, kind: str, name: str, data: Any, step: int) -> None:
        """A media record (a model graph, ...) for the next hand-off."""
