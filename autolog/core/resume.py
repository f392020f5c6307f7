"""Resuming a stored run (``autolog.run(resume=RUN, resume_step=N)``): which run, and its attempts.

A resumed run keeps its id and directory; the new attempt appends to the same ``events.alog``.
``meta["attempts"]`` has one entry per attempt: start_time, end_time, status, host, pid, the
step it began at (``step_start``), ``resume_step`` (None: the step went on where it stopped),
the log offset where its records begin (``log_offset``), for a resume from a marked checkpoint
the log size when that checkpoint was taken (``checkpoint_offset``) and, once ended, its
``step``. The reader (`autolog.store.reader`) uses them to supersede what earlier attempts
stored at steps >= a later attempt's resume step (and, when the checkpoint's offset is known,
only what they stored after the checkpoint was taken: a value at the checkpoint's step recorded
before it, such as an evaluation, stays).
"""
from __future__ import annotations

import os
from typing import Any

from autolog.core import meta as meta_mod
from autolog.core.settings import Settings
from autolog.store import files as store_files
from autolog.store import format as store
from autolog.store.reader import RunData, RunLookupError, find_run, list_runs, read_run

UNFINISHED = ("crashed", "failed", "interrupted")  # what resume="last" continues
MARKER = "autolog.json"  # what the trainer integrations write into (or beside) a checkpoint


def read_marker(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """autolog's marker of a checkpoint -- a directory holding ``autolog.json``, or a checkpoint
    file ``<file>`` with ``<file>.autolog.json`` beside it -- or None: ``{"run_id", "project",
    "run_path", "step", "log_offset"}`` (the run's log size when the checkpoint was taken)."""
    path = os.fspath(checkpoint)
    candidate = os.path.join(path, MARKER) if os.path.isdir(path) else f"{path}.{MARKER}"
    try:
        data = store_files.read_json(candidate)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("run_path"), str) and type(data.get("step")) is int:
        return data
    return None


def target(settings: Settings) -> tuple[RunData | None, dict[str, Any] | None]:
    """The run `settings.resume` names, and the checkpoint marker it was found through (RUN may be
    a checkpoint an integration marked). (None, None): "last" found no unfinished run of the
    project, so a new run starts. A reference that matches no run, or several, is a ValueError."""
    ref = settings.resume
    if ref == "last":
        for run in list_runs(settings.dir, settings.project):
            if run.status in UNFINISHED:
                return run, None
        return None, None
    marker = read_marker(ref) if not os.path.isfile(os.path.join(ref, store_files.RUN_FILE)) else None
    if marker is not None:
        ref = marker["run_path"]
    try:
        return find_run(ref, settings.dir), marker
    except RunLookupError as exc:
        raise ValueError(f"resume: {exc}") from None


def take_lock(run: RunData) -> int:
    """The run's lock, or a RuntimeError when a live process still writes the run."""
    try:
        return store_files.hold_lock(run.path)
    except BlockingIOError:
        pid = run.meta.get("pid")
        raise RuntimeError(f"resume: run {run.id} ({run.path}) is still being written by another process"
                           f"{f' (pid {pid})' if pid else ''}; it can be resumed once that process ends") from None


def attempts(run: RunData, new_meta: dict[str, Any], step_start: int, resume_step: int | None,
             log_offset: int, checkpoint_offset: int | None = None) -> list[dict[str, Any]]:
    """The earlier attempts of `run` (the last one closed: its status as read, its end and step
    from the log when it crashed) followed by the new attempt's entry."""
    earlier = [dict(a) for a in run.meta.get("attempts", []) if isinstance(a, dict)]
    if not earlier:
        earlier = [{"start_time": run.meta.get("start_time"), "start_timestamp": run.meta.get("start_timestamp"),
                    "host": run.meta.get("host"), "pid": run.meta.get("pid"), "step_start": 0,
                    "resume_step": None, "log_offset": 0}]
    last = earlier[-1]
    last["status"] = run.status
    if run.status == "crashed":  # killed: it ended when it last handed off
        wall, step = _log_end(run.path)
        last.update(end_time=meta_mod.iso(wall) if wall is not None else None, step=step)
    else:
        last.setdefault("end_time", run.meta.get("end_time"))
        last.setdefault("step", run.meta.get("step"))
    for key in ("exception_type", "exception_message", "signal"):
        if key in run.meta and run.status != "crashed":
            last.setdefault(key, run.meta[key])
    entry = {"start_time": new_meta.get("start_time"), "start_timestamp": new_meta.get("start_timestamp"),
             "host": new_meta.get("host"), "pid": new_meta.get("pid"), "status": "running",
             "step_start": step_start, "resume_step": resume_step, "log_offset": log_offset}
    if checkpoint_offset is not None:
        entry["checkpoint_offset"] = checkpoint_offset
    return earlier + [entry]


def end_step(run: RunData) -> int:
    """The step a run stopped at: recorded at its end, else (it crashed) its last hand-off's."""
    step = run.meta.get("step")
    if type(step) is int and step >= 0 and run.status != "crashed":
        return step
    return _log_end(run.path)[1]


def _log_end(path: str) -> tuple[float | None, int]:
    """(wall time of the last point, the run's step at the last hand-off) of a run's log."""
    log = store.LogArrays(os.path.join(path, store.EVENTS_FILE))
    wall = float(log.walls.max()) if len(log.walls) else None
    return wall, int(log.last_step)


def log_offset(path: str) -> int:
    try:
        return os.path.getsize(os.path.join(path, store.EVENTS_FILE))
    except OSError:
        return 0


def close_attempt(meta: dict[str, Any], status: str, step: int) -> None:
    """At the end of a resumed run: the current attempt's end, status and step."""
    entries = meta.get("attempts")
    if not isinstance(entries, list) or not entries or not isinstance(entries[-1], dict):
        return
    entry = entries[-1]
    entry.update(end_time=meta.get("end_time"), status=status, step=step, duration=meta.get("duration"))
    for key in ("exception_type", "exception_message", "signal"):
        if key in meta:
            entry[key] = meta[key]


def reread(run: RunData) -> RunData:
    """`run` read again once its lock is ours (what it holds now is final): a record still saying
    ``running`` is then a writer that died (``crashed``)."""
    again = read_run(run.path)
    if again.status == "running":
        again.status = "crashed"
    return again
