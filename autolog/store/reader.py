"""Reading runs back from the local store: `read_run` and `list_runs`."""
from __future__ import annotations

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


class RunData:
    """A run read back from the local store (see SPEC: id, name, project, path, status, config,
    meta, summary, metrics, histograms; plus media). Metrics load on first access."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
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
        histograms: dict[str, list[tuple[int, list[float], list[float]]]] = {}
        for item, edges, counts in log.histograms:
            histograms.setdefault(item["name"], []).append((int(item["step"]), edges, counts))
        metrics: dict[str, list[tuple[int, float]]] = {}
        if len(log.keys):
            order = np.lexsort((log.steps, log.keys))  # by key, then step; stable for equal steps
            keys, steps, values = log.keys[order], log.steps[order], log.values[order]
            bounds = np.flatnonzero(np.diff(keys)) + 1
            starts = np.concatenate(([0], bounds))
            ends = np.concatenate((bounds, [len(keys)]))
            collecting = gc.isenabled()
            gc.disable()  # millions of fresh tuples would trigger collections that find nothing
            try:
                for s, e in zip(starts.tolist(), ends.tolist()):
                    metrics[log.names[int(keys[s])]] = list(zip(steps[s:e].tolist(), values[s:e].tolist()))
            finally:
                if collecting:
                    gc.enable()
        media = log.media
        for series in histograms.values():
            series.sort(key=lambda item: item[0])
        return metrics, histograms, media

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


def read_run(path: str | os.PathLike) -> RunData:
    """The run stored in directory `path` (``<dir>/<project>/<run id>``)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, files.RUN_FILE)):
        raise FileNotFoundError(f"read_run: no autolog run in {path!r} (expected {files.RUN_FILE} there)")
    return RunData(path)


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
