"""Plain host-side records: what the pipeline hands to every sink.

Everything here is already on the host (Python numbers, lists, numpy arrays): sinks never see a
device tensor and never need to synchronise anything.
"""
from __future__ import annotations

import dataclasses
from typing import Any

# (name, step, value, wall_time) -- a tuple, not an object, so that a million points stay cheap.
ScalarPoint = tuple[str, int, float, float]


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Identity of a run, given to `Sink.open`."""

    id: str
    name: str
    project: str
    path: str  # the run directory, <dir>/<project>/<id>
    config: dict[str, Any]  # flattened with "." keys, secrets already redacted
    meta: dict[str, Any]
    tags: tuple[str, ...] = ()
    mode: str | None = None  # "offline" is honoured by sinks that know it


@dataclasses.dataclass(frozen=True)
class HistogramRecord:
    """A histogram computed on the device: `len(edges) == len(counts) + 1`."""

    name: str
    step: int
    edges: list[float]
    counts: list[float]
    wall_time: float


@dataclasses.dataclass(frozen=True)
class MediaRecord:
    """An image, figure, text or model graph.

    kind: "image" (data: uint8 HWC numpy array, path: PNG relative to the run directory),
    "figure" (same as image, rendered from matplotlib), "text" (data: str),
    "graph" (data: a sink-specific description of the model graph, see `autolog.watch`).
    """

    kind: str
    name: str
    step: int
    wall_time: float
    data: Any = None
    path: str | None = None


@dataclasses.dataclass
class Batch:
    """One hand-off from the training thread: everything captured since the previous one."""

    scalars: list[ScalarPoint] = dataclasses.field(default_factory=list)
    histograms: list[HistogramRecord] = dataclasses.field(default_factory=list)
    media: list[MediaRecord] = dataclasses.field(default_factory=list)
    config: dict[str, Any] | None = None  # config keys added or changed since the last batch
    step: int = 0  # the run's step when the batch was handed off
    prog_bar: tuple[str, ...] = ()  # scalar names marked with autolog.log(..., prog_bar=True)

    def __bool__(self) -> bool:
        return bool(self.scalars or self.histograms or self.media or self.config)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended, given to `Sink.close`."""

    status: str  # "finished", "failed" or "interrupted"
    summary: dict[str, Any]
    meta: dict[str, Any]
    config: dict[str, Any]


STATUSES = ("running", "finished", "failed", "interrupted", "crashed")
