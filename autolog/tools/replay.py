"""Replaying a stored run into sinks: ``autolog replay RUN --to tensorboard --to wandb``.

The run is read from its local store and handed to each sink the way a live run would have
handed it: ``open(RunInfo)``, then `Batch`es in step order, then ``close(RunResult)``. Sinks
write where they would have written live (TensorBoard: ``<run>/tensorboard``, CSV:
``<run>/metrics.csv``, W&B: ``<run>/wandb``), with the same run id, name, project, tags, config
and meta.

Choices:

- Scalars and histograms keep their original wall times (read from the record log, which
  `RunData.metrics` does not expose), so TensorBoard's time axes match the live run.
- Batches hold whole steps, about `CHUNK` scalar points each (more when one step alone has
  more), so a step's values are never split across two batches (one CSV row per step, one W&B
  history row per step). W&B gets every step in ascending order, even points logged live with
  an explicit lower step, which a live W&B sink had to drop.
- Images and figures are decoded from their PNG files (Pillow) into uint8 HWC arrays, with
  ``path`` kept so TensorBoard reuses the PNG bytes. Without Pillow they are skipped, with a
  note. Texts go as kind ``"text"``; a model graph as kind ``"graph"`` with its printed form
  only (the store keeps no TensorBoard GraphDef).
- Status: sinks know ``finished``, ``failed`` and ``interrupted``. A ``crashed`` run (the writer
  died without closing) is sent as ``failed``; a run still ``running`` (replayed while it
  writes: only what is stored so far) as ``interrupted``. See `STATUS_MAP`.
- A target that already holds this run's output is refused unless ``force``: TensorBoard event
  files in the target directory (a second event file would make TensorBoard show every point
  twice; write elsewhere with ``log_dir``), or a W&B run directory with the same id under
  ``<run>/wandb``. The CSV file is simply rewritten (same content). ``local`` is refused: the
  run is already in the local store.
- A sink that fails is reported once and left out from then on (closed if it opened); the
  other sinks go on, as in a live run.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from autolog.store import format as store
from autolog.store.reader import RunData
from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult
from autolog.sinks import Sink, sink_class

__all__ = ["replay", "batches", "run_info", "run_result", "STATUS_MAP", "CHUNK", "ReplayError"]

CHUNK = 10_000  # scalar points per batch (whole steps: a batch may hold more)
HIST_CHUNK = 1_000  # histograms per batch
MEDIA_CHUNK = 100  # media records per batch (images are decoded one batch at a time)

#: stored status -> the status the sinks get (they know finished, failed and interrupted)
STATUS_MAP = {"finished": "finished", "failed": "failed", "interrupted": "interrupted",
              "crashed": "failed", "running": "interrupted"}


class ReplayError(Exception):
    """The replay cannot start (unknown sink, target already written...): nothing was written."""


def run_info(run: RunData, mode: str | None = None) -> RunInfo:
    """The `RunInfo` the live run gave its sinks."""
    return RunInfo(id=run.id, name=run.name, project=run.project, path=run.path,
                   config=dict(run.config), meta=dict(run.meta), tags=tuple(run.tags), mode=mode)


def run_result(run: RunData) -> RunResult:
    """How the run ended, with its status mapped by `STATUS_MAP`."""
    return RunResult(status=STATUS_MAP.get(run.status, "failed"), summary=dict(run.summary),
                     meta=dict(run.meta), config=dict(run.config))


# ------------------------------------------------------------------------ reading the log

def _read_log(run: RunData) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                     list[HistogramRecord]]:
    """Every scalar point (name index, step, value, wall) and histogram, with wall times."""
    log = store.LogArrays(os.path.join(run.path, store.EVENTS_FILE))
    histograms = [HistogramRecord(item["name"], int(item["step"]), edges, counts, float(item.get("wall", 0.0)))
                  for item, edges, counts in log.histograms]
    order = np.argsort(log.steps, kind="stable")  # step order; log order within a step
    k, s, v, w = (a[order] for a in (log.keys, log.steps, log.values, log.walls))
    histograms.sort(key=lambda h: h.step)  # stable: log order within a step
    return log.names, k, s, v, w, histograms


def _decode_png(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGBA" if "transparency" in img.info or "A" in img.mode else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _media_record(run: RunData, item: dict[str, Any],
                  note: Callable[[str], None]) -> MediaRecord | None:
    kind, name = item.get("kind", ""), item.get("name", "")
    step, wall = int(item.get("step", 0)), float(item.get("wall", 0.0))
    if kind in ("image", "figure"):
        rel = item.get("path")
        file = os.path.join(run.path, rel) if rel else ""
        if not rel or not os.path.isfile(file):
            note(f"{kind} {name!r} at step {step}: file {rel!r} missing, skipped")
            return None
        try:
            data = _decode_png(file)
        except ImportError:
            note(f"{kind}s skipped: decoding them needs Pillow (pip install 'autolog[media]')")
            return None
        except Exception as exc:  # noqa: BLE001 -- one unreadable file must not stop the replay
            note(f"{kind} {name!r} at step {step}: cannot read {rel}: {exc}; skipped")
            return None
        return MediaRecord(kind, name, step, wall, data=data, path=rel)
    if kind == "graph":
        return MediaRecord(kind, name, step, wall, data={"text": item.get("text") or ""})
    return MediaRecord(kind, name, step, wall, data=item.get("text"), path=item.get("path"))


def batches(run: RunData, chunk: int = CHUNK,
            note: Callable[[str], None] = lambda msg: None) -> Iterator[Batch]:
    """The run's records as `Batch`es in step order, each holding whole steps."""
    names, keys, steps, values, walls, hists = _read_log(run)
    media = sorted(run.media, key=lambda m: int(m.get("step", 0)))
    hist_steps = np.asarray([h.step for h in hists], dtype=np.int64)
    media_steps = np.asarray([int(m.get("step", 0)) for m in media], dtype=np.int64)
    sources = ((steps, max(1, chunk)), (hist_steps, HIST_CHUNK), (media_steps, MEDIA_CHUNK))
    pos = [0, 0, 0]
    while any(p < len(arr) for p, (arr, _) in zip(pos, sources)):
        # the batch ends at the smallest step that fills one of the three kinds' quotas
        last = min(int(arr[min(p + quota, len(arr)) - 1])
                   for p, (arr, quota) in zip(pos, sources) if p < len(arr))
        ends = [int(np.searchsorted(arr, last, side="right")) for arr, _ in sources]
        (s0, h0, m0), (s1, h1, m1) = pos, ends
        scalars = list(zip([names[i] for i in keys[s0:s1].tolist()], steps[s0:s1].tolist(),
                           values[s0:s1].tolist(), walls[s0:s1].tolist()))
        records = [_media_record(run, item, note) for item in media[m0:m1]]
        yield Batch(scalars=scalars, histograms=hists[h0:h1],
                    media=[r for r in records if r is not None], step=last)
        pos = ends


# ------------------------------------------------------------------------ the replay

def _event_files(folder: str) -> list[str]:
    return glob.glob(os.path.join(glob.escape(folder), "events.out.tfevents.*"))


def _make_sink(name: str, run: RunData, log_dir: str | None, force: bool) -> Sink:
    if name == "local":
        raise ReplayError("'local': the run is already in the local store")
    try:
        cls = sink_class(name)
    except (ValueError, ImportError) as exc:
        raise ReplayError(str(exc)) from exc
    if name == "tensorboard":
        target = os.path.join(log_dir, run.id) if log_dir else os.path.join(run.path, "tensorboard")
        if _event_files(target) and not force:
            raise ReplayError(
                f"{target} already holds TensorBoard event files (from the live run or an earlier "
                f"replay); another would make TensorBoard show every point twice. Write elsewhere "
                f"with --log-dir DIR, or add one anyway with --force")
        return cls(log_dir=log_dir)
    if name == "wandb":
        from autolog.sinks.wandb import wandb_run_id

        pattern = os.path.join(glob.escape(os.path.join(run.path, "wandb")),
                               f"*run-*-{glob.escape(wandb_run_id(run.id) or '')}")
        if glob.glob(pattern) and not force:
            raise ReplayError(
                f"{run.path}/wandb already holds a W&B run with id {wandb_run_id(run.id)!r} (from "
                f"the live run or an earlier replay); add another anyway with --force")
    return cls()


def replay(run: RunData, to: Sequence[str], *, offline: bool = False, log_dir: str | None = None,
           force: bool = False, chunk: int = CHUNK,
           out: Callable[[str], None] = print) -> int:
    """Feed `run` into the sinks named in `to`; 0 when every sink took all of it, else 1.

    Raises `ReplayError` before writing anything when a sink name is unknown or its target
    already holds this run (see the module doc; `force` overrides). `offline` (or
    ``WANDB_MODE=offline``) opens W&B runs offline. `log_dir`: TensorBoard writes to
    ``<log_dir>/<run id>`` instead of ``<run>/tensorboard``.
    """
    names = list(dict.fromkeys(n.strip() for n in to if n.strip()))
    if not names:
        raise ReplayError("no sink to replay into")
    sinks = [_make_sink(name, run, log_dir, force) for name in names]
    mode = "offline" if offline or os.environ.get("WANDB_MODE") == "offline" else None
    info = run_info(run, mode)
    result = run_result(run)
    if result.status != run.status:
        out(f"note: run status {run.status!r} is sent to the sinks as {result.status!r}")

    failed: set[int] = set()
    opened: list[int] = []

    def call(i: int, what: str, fn: Callable, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # noqa: BLE001 -- one sink failing must not stop the others
            failed.add(i)
            print(f"autolog replay: sink {names[i]!r} failed in {what}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return False

    where: dict[int, str] = {}
    started = time.monotonic()
    for i, sink in enumerate(sinks):
        if call(i, "open", sink.open, info):
            opened.append(i)
            path = getattr(sink, "path", None)  # TensorBoard and CSV say where they write
            if isinstance(path, str):
                where[i] = path
            elif names[i] == "wandb":
                where[i] = os.path.join(run.path, "wandb")
    notes: set[str] = set()

    def note(msg: str) -> None:
        if msg not in notes:
            notes.add(msg)
            out(f"note: {msg}")

    counts = [0, 0, 0]
    try:
        for batch in batches(run, chunk, note):
            counts[0] += len(batch.scalars)
            counts[1] += len(batch.histograms)
            counts[2] += len(batch.media)
            for i in opened:
                if i not in failed:
                    call(i, "write", sinks[i].write, batch)
    except KeyboardInterrupt:
        result = RunResult("interrupted", result.summary, result.meta, result.config)
        raise
    finally:
        for i in opened:
            call(i, "close", sinks[i].close, result)
    took = time.monotonic() - started
    out(f"replayed run {run.id} ({run.name}): {counts[0]} scalar points, {counts[1]} histograms, "
        f"{counts[2]} media in {took:.1f}s")
    for i, name in enumerate(names):
        state = "FAILED" if i in failed else "ok"
        out(f"  {name:12} {state}" + (f"  {where[i]}" if i in where else ""))
    return 1 if failed else 0
