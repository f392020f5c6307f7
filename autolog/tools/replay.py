"""Finishing sinks from the run's log: ``autolog sync RUN`` and ``autolog replay RUN --to ...``.

Both are the live pipeline's own reader: a `Follower` per sink reads ``events.alog`` from a
position, exactly as a live sink that fell behind does (`autolog.pipeline.follower`).

- **sync** finishes every sink of the run that did not finish live (``sinks.json``: still
  behind at ``close_timeout``, or the process died): each is rebuilt from its recorded class and
  options, opened with ``RunInfo.resumed=True`` (so it appends to what it wrote live) and fed the
  log from its recorded position to the end, then closed with the run's result. Every point
  exactly once: the position moves only after each write. Sinks that only make sense live (the
  console) are skipped; a sink that cannot be rebuilt (options that are not JSON, a class
  defined in a function) is reported and left unfinished.
- **replay** writes the whole run into new sinks, by name: ``open(RunInfo)``, every record of
  the log in log order (the order the live sinks got them; wall times are the live run's), then
  ``close(RunResult)``. Sinks write where they would have written live (TensorBoard:
  ``<run>/tensorboard``, CSV: ``<run>/metrics.csv``, W&B: ``<run>/wandb``). Replay targets are
  recorded in ``sinks.json`` too, so an interrupted replay is finished by ``autolog sync``.

Choices:

- Images and figures are decoded from their PNG files (Pillow) with ``path`` kept; without
  Pillow, or with a file missing, that record is skipped with a note.
- Status: sinks know ``finished``, ``failed`` and ``interrupted``. A ``crashed`` run (the writer
  died without closing) is sent as ``failed``; a run still ``running`` as ``interrupted``
  (`STATUS_MAP`). `sync` refuses a run whose writer is still alive.
- Replay refuses a target that already holds this run's output unless ``force`` (each sink says
  so itself, `Sink.existing_output`): TensorBoard event files in the target directory (a second
  file would show every point twice; write elsewhere with ``log_dir``), or a W&B run with the
  same id under ``<run>/wandb``. ``local``
  is refused (the run is its log). Each target is done if it can be; every refusal is reported
  and makes the exit status 1.
- A sink that fails is reported once and counted; the other sinks go on, as in a live run.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from autolog.pipeline.follower import POSITIONS_FILE, Follower, Positions, build_sink
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import Sink, available_sinks, sink_class, unknown_sink_message
from autolog.store import format as store
from autolog.store.reader import RunData, attempt_bounds, superseded

__all__ = ["replay", "sync", "run_info", "run_result", "STATUS_MAP", "ReplayError"]

#: stored status -> the status the sinks get (they know finished, failed and interrupted)
STATUS_MAP = {"finished": "finished", "failed": "failed", "interrupted": "interrupted",
              "crashed": "failed", "running": "interrupted"}


class ReplayError(Exception):
    """A target cannot be written (unknown sink, already written...): nothing went to it."""


def run_info(run: RunData, mode: str | None = None, resumed: bool = False) -> RunInfo:
    """The `RunInfo` the live run gave its sinks."""
    return RunInfo(id=run.id, name=run.name, project=run.project, path=run.path,
                   config=dict(run.config), meta=dict(run.meta), tags=tuple(run.tags), mode=mode,
                   resumed=resumed)


def run_result(run: RunData) -> RunResult:
    """How the run ended, with its status mapped by `STATUS_MAP`."""
    return RunResult(status=STATUS_MAP.get(run.status, "failed"), summary=dict(run.summary),
                     meta=dict(run.meta), config=dict(run.config), series=frozenset(run.metrics))


def current_view(run: RunData) -> Callable[[Batch, int], Batch] | None:
    """For a resumed run: a filter leaving out of each batch read from the log (and the offset
    where it ends) the points a later attempt superseded, so that a replay writes the run as
    `read_run` reads it; None for a run never resumed."""
    bounds = attempt_bounds(run.meta)
    if not bounds:
        return None

    def keep(batch: Batch, end: int) -> Batch:
        def gone(steps: list[int]) -> list[bool]:
            return superseded(bounds, np.asarray(steps, dtype=np.int64), np.full(len(steps), end, dtype=np.int64)).tolist()

        batch.scalars = [p for p, out in zip(batch.scalars, gone([p[1] for p in batch.scalars])) if not out]
        batch.histograms = [h for h, out in zip(batch.histograms, gone([h.step for h in batch.histograms])) if not out]
        batch.media = [m for m, out in zip(batch.media, gone([m.step for m in batch.media])) if not out]
        return batch

    return keep


def _log_path(run: RunData) -> str:
    return os.path.join(run.path, store.EVENTS_FILE)


def _log_size(run: RunData) -> int:
    try:
        return os.path.getsize(_log_path(run))
    except OSError:
        return 0


def _follow(run: RunData, items: list[tuple[str, Sink, dict[str, Any], int]], info: RunInfo,
            positions: Positions, result: RunResult, out: Callable[[str], None]) -> dict[str, Follower]:
    """Feed each sink the log from its position to the end and close it; the live code path."""
    notes: set[str] = set()

    def note(msg: str) -> None:
        if msg not in notes:
            notes.add(msg)
            out(f"note: {msg}")

    def report(sink: str, what: str, exc: BaseException) -> None:
        print(f"autolog: sink {sink!r} failed in {what}: {type(exc).__name__}: {exc}", file=sys.stderr)

    end = _log_size(run)
    followers = {}
    keep = current_view(run)
    for label, sink, entry, start in items:
        follower = Follower(sink, info, positions, report, start=start, entry=entry, note=note, keep=keep)
        follower.log_grew(end)
        follower.finish(result)
        followers[label] = follower
    for follower in followers.values():
        follower.caught_up(None)
    return followers


# ------------------------------------------------------------------------ replay

def _make_sink(name: str, info: RunInfo, log_dir: str | None, force: bool) -> Sink:
    if name == "local":
        raise ReplayError("'local': the run is already in the local store (its log)")
    if name not in available_sinks():
        raise ReplayError(unknown_sink_message(name))
    try:
        cls = sink_class(name)
        sink = cls(log_dir=log_dir) if name == "tensorboard" else cls()
    except (ValueError, ImportError, TypeError) as exc:
        raise ReplayError(f"{name!r}: {exc}") from exc
    already = sink.existing_output(info)  # each backend knows where it writes
    if already and not force:
        raise ReplayError(already)
    return sink


def replay(run: RunData, to: Sequence[str], *, offline: bool = False, log_dir: str | None = None,
           force: bool = False, out: Callable[[str], None] = print) -> int:
    """Write `run` into the sinks named in `to`; 0 when every target took all of it, else 1.

    Each target is checked first (see the module doc; `force` overrides "already written");
    a refused target is reported and skipped, the others are written. `offline` (or
    ``WANDB_MODE=offline``) opens W&B runs offline. `log_dir`: TensorBoard writes to
    ``<log_dir>/<run id>`` instead of ``<run>/tensorboard``. Raises `ReplayError` when no name
    is given.
    """
    names = list(dict.fromkeys(n.strip() for n in to if n.strip()))
    if not names:
        raise ReplayError("no sink to replay into")
    mode = "offline" if offline or os.environ.get("WANDB_MODE") == "offline" else None
    info = run_info(run, mode)
    refused: list[str] = []
    sinks: list[tuple[str, Sink]] = []
    for name in names:
        try:
            sinks.append((name, _make_sink(name, info, log_dir, force)))
        except ReplayError as exc:
            refused.append(name)
            print(f"autolog replay: refused {exc}", file=sys.stderr)
    result = run_result(run)
    if sinks and result.status != run.status:
        out(f"note: run status {run.status!r} is sent to the sinks as {result.status!r}")
    positions = Positions.load(run.path)
    started = time.monotonic()
    items = [(name, sink, positions.add(sink, 0, mode), 0) for name, sink in sinks]
    positions.save()
    followers = _follow(run, items, info, positions, result, out) if items else {}
    took = time.monotonic() - started
    if followers:
        scalars, hists, media = next(iter(followers.values())).counts
        out(f"replayed run {run.id} ({run.name}): {scalars} scalar points, {hists} histograms, "
            f"{media} media in {took:.1f}s")
    for name in names:
        if name in refused:
            out(f"  {name:12} REFUSED")
            continue
        follower = followers[name]
        where = follower.where
        if where is None and name == "wandb":
            where = os.path.join(run.path, "wandb")
        state = "FAILED" if follower.errors else "ok"
        out(f"  {name:12} {state}" + (f"  {where}" if isinstance(where, str) else ""))
    return 1 if refused or any(f.errors for f in followers.values()) else 0


# ------------------------------------------------------------------------ sync

def sync(run: RunData, out: Callable[[str], None] = print) -> int:
    """Finish every sink of `run` that has not got everything (``sinks.json``), from exactly
    where it stopped; 0 when all of them are finished, else 1 (see the module doc)."""
    if run.status == "running":
        out(f"autolog sync: run {run.id} is still being written by its process; sync it when it ends")
        return 1
    positions = Positions.load(run.path)
    if not positions.entries:
        out(f"run {run.id} ({run.name}): no sink positions recorded ({POSITIONS_FILE}); nothing to sync")
        return 0
    pending = [e for e in positions.entries if not e.get("done") and e.get("syncable", True)]
    if not pending:
        out(f"run {run.id} ({run.name}): every sink has everything; nothing to sync")
        return 0
    failed = 0
    items = []
    for entry in pending:
        label = f"{entry.get('name')}#{positions.entries.index(entry)}"
        try:
            sink = build_sink(entry)
        except Exception as exc:  # noqa: BLE001 -- report it, sync the others
            failed += 1
            out(f"  {entry.get('name', '?'):12} NOT SYNCED: cannot rebuild it: {type(exc).__name__}: {exc}")
            continue
        items.append((label, sink, entry, int(entry.get("offset", 0))))
    starts = {label: start for label, _s, _e, start in items}
    followers: dict[str, Follower] = {}
    for mode in dict.fromkeys(e.get("mode") for _l, _s, e, _o in items):  # as each was opened live
        group = [item for item in items if item[2].get("mode") == mode]
        followers.update(_follow(run, group, run_info(run, mode, resumed=True), positions,
                                 run_result(run), out))
    for label, follower in followers.items():
        name = label.rpartition("#")[0]
        ok = follower.done and not follower.errors
        failed += not ok
        scalars, hists, media = follower.counts
        out(f"  {name:12} {'ok' if ok else 'FAILED'}  from log byte {starts[label]}: {scalars} scalar "
            f"points, {hists} histograms, {media} media")
    return 1 if failed else 0
