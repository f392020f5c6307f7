"""Plain host-side records: what the pipeline hands to every sink.

Everything here is already on the host (Python numbers, lists, numpy arrays): sinks never see a
device tensor and never need to synchronise anything.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# (name, step, value, wall_time) -- a tuple, not an object, so that a million points stay cheap.
ScalarPoint = tuple[str, int, float, float]


@dataclasses.dataclass(frozen=True, eq=False)
class StepNames:
    """The series names of one optimizer's step rows (`autolog.pipeline.buffer`): its loss and
    clip norm. A rename (`name_optimizer`) makes a new object, so rows keep the names they were
    recorded under. Compared by identity: a row's hyperparameters marked `SAME` repeat those of
    the previous row with the same object."""

    loss: str
    grad_norm: str


class _Same:
    """`SAME`: a step row's hyperparameters are those of the previous row of its optimizer."""

    def __repr__(self) -> str:
        return "SAME"


SAME = _Same()


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
    resumed: bool = False  # True when `autolog sync` continues a sink's earlier output, or a resumed
    # run (``autolog.run(resume=...)``) a new attempt of it: append to it
    resume_step: int | None = None  # a resumed run's new attempt supersedes the points at steps >= this


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


@dataclasses.dataclass(frozen=True)
class Probe:
    """A control value travelling with a hand-off (e.g. the non-finite monitor's first bad step
    and parameter per device): `values` are host numbers once the batch is resolved."""

    kind: str
    key: Any
    step: int
    values: list[float]


@dataclasses.dataclass
class ScalarColumns:
    """Scalar points as columns (numpy, no Python object per point): point i is
    ``(names[keys[i]], steps[i], values[i], walls[i])``. The writer expands the training
    thread's step rows into this form; `Batch.materialize` turns it into `ScalarPoint` tuples
    for the sinks."""

    names: list[str]
    keys: np.ndarray  # uint32, indices into `names`
    steps: np.ndarray  # int64
    values: np.ndarray  # float64
    walls: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.keys)

    def points(self) -> list[ScalarPoint]:
        names = self.names
        return list(zip([names[k] for k in self.keys.tolist()], self.steps.tolist(), self.values.tolist(),
                        self.walls.tolist()))

    def last_values(self) -> dict[str, float]:
        """The last value of each name (in point order)."""
        last = dict(zip(self.keys.tolist(), self.values.tolist()))  # a later point replaces an earlier one
        names = self.names
        return {names[k]: v for k, v in last.items()}


@dataclasses.dataclass
class Batch:
    """One hand-off from the training thread: everything captured since the previous one.

    `scalars`, `histograms`, `media`, `config` are the data every sink and the log see. The
    control fields (`probes`, `timing`) are typed findings for the writer-side processors
    (`autolog.capture`); the writer empties them before the log or any sink sees the batch
    (`public`), so no internal record can ever reach a sink.
    """

    scalars: list[ScalarPoint] = dataclasses.field(default_factory=list)
    histograms: list[HistogramRecord] = dataclasses.field(default_factory=list)
    media: list[MediaRecord] = dataclasses.field(default_factory=list)
    config: dict[str, Any] | None = None  # config keys added or changed since the last batch
    step: int = 0  # the run's step when the batch was handed off
    prog_bar: tuple[str, ...] = ()  # scalar names marked with autolog.log(..., prog_bar=True)
    # values logged with autolog.log(..., logger=False): for the console's bar only. The run's log
    # does not store them, so a sink reading the log back (one that fell behind, `autolog sync`)
    # never has them; every other sink ignores them.
    bar: list[ScalarPoint] = dataclasses.field(default_factory=list)
    # -- control (never seen by a sink) --
    probes: list[Probe] = dataclasses.field(default_factory=list)
    timing: list[Any] = dataclasses.field(default_factory=list)  # (step, start, end, samples, wall)
    dropped_values: int = 0  # values that could not be converted (each costs only itself)
    # more scalar points, as columns: the step rows, expanded on the writer thread. Only the
    # writer sees them: it gives `materialize`d batches to the sinks.
    columns: ScalarColumns | None = None

    def __bool__(self) -> bool:
        return bool(self.scalars or self.histograms or self.media or self.config or self.columns)

    def materialize(self) -> "Batch":
        """`columns` moved into `scalars` as points (before the others: the step rows come
        first), so that `scalars` holds every point."""
        if self.columns is not None:
            self.scalars = self.columns.points() + list(self.scalars)
            self.columns = None
        return self

    def public(self) -> "Batch":
        """This batch with its control fields emptied (what the log and the sinks get)."""
        if self.probes or self.timing or self.dropped_values:
            self.probes, self.timing, self.dropped_values = [], [], 0
        return self


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended, given to `Sink.close`."""

    status: str  # "finished", "failed" or "interrupted"
    summary: dict[str, Any]
    meta: dict[str, Any]
    config: dict[str, Any]
    # the names of every scalar series of the run, so that a sink resumed by `autolog sync`
    # (which saw only part of the run) can tell series from other summary values
    series: frozenset[str] = frozenset()


STATUSES = ("running", "finished", "failed", "interrupted", "crashed")
