"""Reading runs back from the local store: `read_run` and `list_runs`."""
from __future__ import annotations

import dataclasses
import fcntl
import gc
import glob
import math
import os
from functools import cached_property
from typing import Any

import numpy as np

from autolog.store import files
from autolog.store import format as store
from autolog.core.settings import DEFAULT_DIR, ENV


_NON_FINITE = ("nan", "inf", "-inf")  # how run.json spells non-finite summary values


def _lock_is_held(path: str) -> bool:
    """Whether a live process holds the run's lock (a new descriptor conflicts even in-process)."""
    try:
        fd = os.open(os.path.join(path, files.LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


_FIELDS: dict[str, tuple[type, Any]] = {  # run.json field: (type, default when absent)
    "id": (str, None), "project": (str, None), "name": (str, None), "status": (str, "running"),
    "tags": (list, []), "config": (dict, {}), "meta": (dict, {}), "summary": (dict, {})}


def _run_record(path: str) -> dict[str, Any]:
    """run.json checked field by field; a ValueError naming the file for anything else."""
    try:
        record = files.read_json(path)
    except ValueError as exc:  # not JSON, not UTF-8
        raise ValueError(f"read_run: {path} is not a readable run record: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"read_run: {path} is not a run record (expected a JSON object)")
    out = {}
    for field, (kind, default) in _FIELDS.items():
        value = record.get(field, default)
        if value is None and default is None and field == "name":
            out[field] = None
            continue
        if not isinstance(value, kind) or (kind is str and field in ("id", "project") and not value):
            raise ValueError(f"read_run: {path}: {field!r} must be a {kind.__name__}, got {value!r:.60}")
        out[field] = value
    return out


@dataclasses.dataclass
class AttemptData:
    """One attempt of a resumed run (``read_run(path, attempts=True).attempts``): its
    ``meta["attempts"]`` entry (`info`: start/end time, status, host, pid, resume_step, ...) and
    every point it stored, those a later attempt superseded included (`superseded`: name ->
    the (step, value) points of `metrics` that the run's merged view leaves out)."""

    number: int
    info: dict[str, Any]
    metrics: dict[str, list[tuple[int, float]]]
    histograms: dict[str, list[tuple[int, list[float], list[float]]]]
    media: list[dict[str, Any]]
    superseded: dict[str, list[tuple[int, float]]]


def _series(names: list[str], keys: np.ndarray, steps: np.ndarray, values: np.ndarray) -> dict[str, list[tuple[int, float]]]:
    """Scalar columns as name -> (step, value) pairs sorted by step (stable for equal steps)."""
    metrics: dict[str, list[tuple[int, float]]] = {}
    if not len(keys):
        return metrics
    order = np.lexsort((steps, keys))  # by key, then step; stable for equal steps
    keys, steps, values = keys[order], steps[order], values[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(keys)]))
    collecting = gc.isenabled()
    gc.disable()  # millions of fresh tuples would trigger collections that find nothing
    try:
        for s, e in zip(starts.tolist(), ends.tolist()):
            metrics[names[int(keys[s])]] = list(zip(steps[s:e].tolist(), values[s:e].tolist()))
    finally:
        if collecting:
            gc.enable()
    return metrics


def _histogram_series(items: list[tuple[dict, list[float], list[float]]]) -> dict[str, list]:
    histograms: dict[str, list[tuple[int, list[float], list[float]]]] = {}
    for item, edges, counts in items:
        histograms.setdefault(item["name"], []).append((int(item["step"]), edges, counts))
    for series in histograms.values():
        series.sort(key=lambda item: item[0])
    return histograms


def attempt_bounds(meta: dict[str, Any]) -> list[tuple[int, int | None, int | None]]:
    """For each attempt after the first of a resumed run: (log offset where it began, the step it
    resumed at or None, the log size when its checkpoint was taken or None), from
    ``meta["attempts"]``; [] for a run never resumed."""
    attempts = meta.get("attempts")
    if not isinstance(attempts, list):
        return []
    out = []
    for entry in attempts[1:]:
        if not isinstance(entry, dict):
            continue
        offset, step, checkpoint = entry.get("log_offset"), entry.get("resume_step"), entry.get("checkpoint_offset")
        if type(offset) is int and offset >= 0:
            out.append((offset, step if type(step) is int and step >= 0 else None,
                        checkpoint if type(checkpoint) is int and 0 <= checkpoint <= offset else None))
    return out


def superseded(bounds: list[tuple[int, int | None, int | None]], steps: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which points (their steps, and the log offsets where their records end) a later attempt
    supersedes: those an earlier attempt stored at steps >= the later one's resume step -- and
    after the later one's checkpoint was taken, when that is known."""
    offsets = np.asarray([offset for offset, _s, _c in bounds], dtype=np.int64)
    which = np.searchsorted(offsets, ends, side="left")  # the attempt that wrote each point
    out = np.zeros(len(steps), dtype=bool)
    for later, (_offset, step, checkpoint) in enumerate(bounds, start=1):
        if step is None:
            continue
        mask = (which < later) & (steps >= step)
        if checkpoint is not None:
            mask &= ends > checkpoint
        out |= mask
    return out


class RunData:
    """A run read back from the local store (see SPEC: id, name, project, path, status, config,
    meta, summary, metrics, histograms; plus media). Metrics load on first access.

    A resumed run reads as one run: for each name, the points of earlier attempts below the step
    a later attempt resumed at, then that attempt's points (``meta["attempts"]`` lists the
    attempts). With ``attempts=True`` (`read_run`), `attempts` holds each attempt's own points,
    the superseded ones included (`AttemptData`); otherwise it is None."""

    def __init__(self, path: str, attempts: bool = False) -> None:
        self.path = os.path.abspath(path)
        self._want_attempts = attempts
        record = _run_record(os.path.join(self.path, files.RUN_FILE))
        self.id: str = record["id"]
        self.name: str = record["name"] or record["id"]
        self.project: str = record["project"]
        self.tags: list[str] = record["tags"]
        self.config: dict[str, Any] = record["config"]
        self.meta: dict[str, Any] = record["meta"]
        self._stored_summary: dict[str, Any] = {
            k: float(v) if isinstance(v, str) and v in _NON_FINITE else v for k, v in record["summary"].items()}
        status = record["status"]
        if status == "running" and not _lock_is_held(self.path):
            status = "crashed"
        self.status: str = status

    def __repr__(self) -> str:
        return f"<RunData {self.project}/{self.id} {self.status}>"

    @cached_property
    def _events(self) -> tuple[dict, dict, list]:
        log = store.LogArrays(os.path.join(self.path, store.EVENTS_FILE))
        self._log_stats = log.stats
        bounds = attempt_bounds(self.meta)
        if not bounds:
            self._attempts = [] if self._want_attempts else None
            if self._want_attempts:
                self._attempts = [AttemptData(0, self._attempt_info(0), _series(log.names, log.keys, log.steps, log.values),
                                              _histogram_series(log.histograms), log.media, {})]
            return _series(log.names, log.keys, log.steps, log.values), _histogram_series(log.histograms), log.media
        offsets = np.asarray([offset for offset, _s, _c in bounds], dtype=np.int64)
        which = np.searchsorted(offsets, log.ends, side="left")  # the attempt that wrote each point
        kept = ~superseded(bounds, log.steps, log.ends)
        hist_ends = np.asarray(log.histogram_ends, dtype=np.int64)
        media_ends = np.asarray(log.media_ends, dtype=np.int64)
        hist_which = np.searchsorted(offsets, hist_ends, side="left")
        media_which = np.searchsorted(offsets, media_ends, side="left")
        hist_steps = np.asarray([int(item["step"]) for item, _e, _c in log.histograms], dtype=np.int64)
        media_steps = np.asarray([int(item["step"]) for item in log.media], dtype=np.int64)
        hist_kept = (~superseded(bounds, hist_steps, hist_ends)).tolist()
        media_kept = (~superseded(bounds, media_steps, media_ends)).tolist()
        if self._want_attempts:
            self._attempts = []
            for a in range(len(bounds) + 1):
                mine = which == a
                gone = mine & ~kept
                self._attempts.append(AttemptData(
                    a, self._attempt_info(a), _series(log.names, log.keys[mine], log.steps[mine], log.values[mine]),
                    _histogram_series([h for h, w in zip(log.histograms, hist_which.tolist()) if w == a]),
                    [m for m, w in zip(log.media, media_which.tolist()) if w == a],
                    _series(log.names, log.keys[gone], log.steps[gone], log.values[gone])))
        else:
            self._attempts = None
        metrics = _series(log.names, log.keys[kept], log.steps[kept], log.values[kept])
        histograms = _histogram_series([h for h, keep in zip(log.histograms, hist_kept) if keep])
        media = [m for m, keep in zip(log.media, media_kept) if keep]
        return metrics, histograms, media

    def _attempt_info(self, number: int) -> dict[str, Any]:
        attempts = self.meta.get("attempts")
        if isinstance(attempts, list) and number < len(attempts) and isinstance(attempts[number], dict):
            return dict(attempts[number])
        return {key: self.meta.get(key) for key in ("start_time", "end_time", "host", "pid")} | {"status": self.status}

    @property
    def attempts(self) -> list[AttemptData] | None:
        """Each attempt's own points (read with ``attempts=True``), else None."""
        self._events
        return self._attempts

    @property
    def log_stats(self) -> store.ScanStats:
        """What reading ``events.alog`` met: records read, bad records skipped, bytes skipped,
        sequence numbers missing, and whether an incomplete record ends the file."""
        self._events
        return self._log_stats

    @property
    def metrics(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar series as (step, value) pairs sorted by step."""
        return self._events[0]

    @property
    def histograms(self) -> dict[str, list[tuple[int, list[float], list[float]]]]:
        """Every histogram series as (step, bin edges, counts), sorted by step."""
        return self._events[1]

    @property
    def media(self) -> list[dict[str, Any]]:
        """Images, figures (``path`` relative to the run directory), texts and graphs."""
        return self._events[2]

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The last value of every scalar, then what the run stored (its return values)."""
        last = {name: series[-1][1] for name, series in self.metrics.items() if series}
        return {**last, **self._stored_summary}


def read_run(path: str | os.PathLike, attempts: bool = False) -> RunData:
    """The run stored in directory `path` (``<dir>/<project>/<run id>``).

    A resumed run reads as one run (the points a later attempt superseded left out); with
    `attempts`, ``.attempts`` also gives each attempt's own points, superseded ones included."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, files.RUN_FILE)):
        raise FileNotFoundError(f"read_run: no autolog run in {path!r} (expected {files.RUN_FILE} there)")
    return RunData(path, attempts=attempts)


def _newest_first_key(run: RunData) -> tuple[float, str]:
    start = run.meta.get("start_timestamp")
    return (float(start) if type(start) in (int, float) and math.isfinite(start) else 0.0), run.id


def list_runs(dir: str | os.PathLike | None = None, project: str | None = None) -> list[RunData]:
    """Every run under `dir` (default: $AUTOLOG_DIR, else "runs"), newest first."""
    root = os.fspath(dir or os.environ.get(ENV["dir"]) or DEFAULT_DIR)
    pattern = os.path.join(glob.escape(root), glob.escape(project) if project else "*", "*", files.RUN_FILE)
    runs = []
    for record in glob.glob(pattern):
        try:
            runs.append(RunData(os.path.dirname(record)))
        except (OSError, ValueError, KeyError):
            continue  # a half-created or foreign directory is not a run
    runs.sort(key=_newest_first_key, reverse=True)
    return runs


class RunLookupError(LookupError):
    """No run, or several runs, match a reference (`find_run`); `candidates` lists the matches."""

    def __init__(self, message: str, candidates: list[RunData] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


MAX_CANDIDATES = 10  # runs listed when a reference is ambiguous


def find_run(ref: str, dir: str | os.PathLike | None = None, project: str | None = None) -> RunData:
    """The one run `ref` names: a run directory, an exact run id, the name of exactly one run, or
    a prefix of exactly one run id (under `dir`, of `project` when given). No match, or several,
    is a `RunLookupError` whose message lists them: never a silent pick."""
    if os.path.isdir(ref) and os.path.isfile(os.path.join(ref, files.RUN_FILE)):
        return read_run(ref)
    runs = list_runs(dir, project)
    for matches in ([r for r in runs if r.id == ref], [r for r in runs if r.name == ref],
                    [r for r in runs if r.id.startswith(ref)]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = "\n".join(f"  {r.id}  {r.project}  {r.status}  {r.name}" for r in matches[:MAX_CANDIDATES])
            more = f"\n  ... and {len(matches) - MAX_CANDIDATES} more" if len(matches) > MAX_CANDIDATES else ""
            raise RunLookupError(f"{ref!r} matches {len(matches)} runs; give more of the id:\n{shown}{more}", matches)
    where = os.fspath(dir or os.environ.get(ENV["dir"]) or DEFAULT_DIR)
    raise RunLookupError(f"no run {ref!r} under {where} ({len(runs)} runs there; `autolog list` shows them)")
