"""A run: its directory, record, buffer, pipeline and lifecycle."""
from __future__ import annotations

import dataclasses
import operator

import os
import signal
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping

import numpy as np
import torch

from autolog import _state
from autolog.core import config as config_mod
from autolog.core import distributed
from autolog.core import process
from autolog.core import resume as resume_mod
from autolog.pipeline import media as media_mod
from autolog.core import meta as meta_mod
from autolog.core import user_warnings, validate
from autolog.store import files as store_files
from autolog.store import format as store
from autolog.store.log import EventLog
from autolog.pipeline.buffer import RunBuffer
from autolog.pipeline.epochs import Epochs
from autolog.pipeline.writer import Pipeline
from autolog.pipeline.records import Batch, MediaRecord, RunInfo, RunResult
from autolog.core.redact import Redactor, scrub
from autolog.core.settings import Settings, safe_component
from autolog.sinks import resolve_sinks
from autolog.sinks.local import LocalSink

_active = _state.active  # the stack of open runs of this process (nested calls join the top)
_all_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()
_NAME, _VALUE = operator.itemgetter(0), operator.itemgetter(2)  # of a scalar point
current = _state.current




class Run:
    """One tracked run. Create it with `autolog.run(...)` or `@autolog.track`."""

    def __init__(self, settings: Settings, func: Callable | None = None, args: tuple = (),
                 kwargs: dict | None = None, instrument: Callable[["Run"], None] | None = None) -> None:
        """`instrument(run)`: installs the automatic capture (`autolog.capture.instrument`, given
        by the API layer: the core never imports the capture)."""
        self.settings = settings
        self._log_every = settings.log_every
        self._instrument = instrument
        self.project = settings.project
        self.tags = settings.tags
        self._redactor = Redactor(settings.redact)
        flat = config_mod.capture(func, args, kwargs or {}, settings.config)
        self.config: dict[str, Any] = self._redactor.config(flat)
        self.summary: dict[str, Any] = {}
        self.status = "running"
        self.buffer = RunBuffer()
        self._epochs = Epochs()
        self._step = 0
        self._optimizer_seen = False
        self._keys_at_step: set[str] = set()
        self._last_handoff = time.monotonic()
        self._flush_due = self._last_handoff + settings.flush_secs  # the next hand-off by time
        self._last_values: dict[str, float] = {}
        self._finished = False
        self._forked = False
        self._media_count = 0
        self._on_finish: list[Callable[["Run"], None]] = []
        self.capture: Any = None  # the automatic capture (`autolog.capture`), set by it
        # Extension points for automatic capture (`RunPort`): called on the training thread
        # just before each hand-off stages the buffer, and on the writer thread with each resolved
        # batch before the sinks see it (they may add or remove records of the batch).
        self._handoff_hooks: list[Callable[["Run"], None]] = []
        self._prepare_hooks: list[Callable[[Batch], None]] = []
        self.flush_count = 0
        self._sync_pending: list[tuple[str, int, Any, str]] = []
        # Reducers of automatic capture (sharded watch statistics): at every reduction point,
        # those with ``pending()`` run ``reduce(coordinator, device)`` on every rank.
        self._reducers: list[Any] = []
        self.dist = distributed.context()
        self.coordinator = distributed.Coordinator(self.dist) if self.dist.initialized and self.dist.world_size > 1 else None
        self._start()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_follower(self) -> bool:
        """True on ranks other than 0: the run exists (same id) but writes nothing."""
        return not self.dist.is_main

    def _start(self) -> None:
        s = self.settings
        self.start_time = time.time()
        self._start_mono = time.monotonic()
        meta = meta_mod.start_meta(self.start_time)
        meta["command"] = self._redactor.argv(meta["command"])
        meta.update(self.dist.meta())
        self.meta = self._redactor.deep(meta)
        self.resumed = False  # True when this run continues a stored one (resume=)
        self._resume_step: int | None = None
        if self.is_follower:
            identity = self.coordinator.share_identity(None) if self.coordinator else None
            identity = identity or {"id": None, "path": None, "name": s.name}
            self.id, self.path, self.name = identity["id"], identity["path"], identity["name"]
            self._step = identity.get("step") or (s.resume_step or 0)  # a resumed job's ranks go on alike
            self._lock_fd = None
            self.pipeline = _NullPipeline()
        else:
            sinks = resolve_sinks(s.sinks)  # bad sink names fail before anything is written
            # "local" is the run's log itself, written for every run whatever `sinks=` says
            local = [x for x in sinks if isinstance(x, LocalSink)]
            sinks = [x for x in sinks if not isinstance(x, LocalSink)]
            previous, marker = resume_mod.target(s) if s.resume is not None else (None, None)
            if previous is None:
                parent = os.path.join(s.dir, self.project)
                self.id, self.path = store_files.new_run_dir(parent)
                self.name = s.name or self.id
                self._lock_fd = store_files.hold_lock(self.path)
            else:
                self._lock_fd = resume_mod.take_lock(previous)
                self._continue(resume_mod.reread(previous), marker)
            self.files = store_files.RunFiles(self.path)
            self._write_record()
            info = RunInfo(id=self.id, name=self.name, project=self.project, path=self.path,
                           config=dict(self.config), meta=dict(self.meta), tags=self.tags,
                           mode=None if s.mode == "online" else s.mode, resumed=self.resumed,
                           resume_step=self._resume_step)
            self.pipeline = Pipeline(sinks, info, prepare=self._prepare,
                                     fsync_secs=local[0].fsync_secs if local else 1.0,
                                     max_pending_mb=s.max_pending_mb)
            if self.coordinator:
                self.coordinator.share_identity({"id": self.id, "path": self.path, "name": self.name,
                                                 "step": self._step})
        _all_runs.add(self)
        _state.push(self)
        process.hooks.acquire()
        try:
            if self._instrument is not None:
                self._instrument(self)  # automatic capture; undone by the hook it adds with on_finish
        except Exception as exc:  # noqa: BLE001 -- never break the user's training
            self.meta["capture_error"] = self._redactor.text(f"{type(exc).__name__}: {validate.safe_str(exc)}")
            print(f"autolog: automatic capture is off for this run: {self.meta['capture_error']}", file=sys.stderr)

    def _continue(self, previous: Any, marker: dict[str, Any] | None = None) -> None:
        """Become the stored run `previous` (resume=): its id, directory, project, name, tags and
        config (this call's config merged over it), its summary as the base of this one's, the
        step it resumes at (``resume_step``, else the marked checkpoint's), and
        ``meta["attempts"]`` with this attempt appended."""
        s = self.settings
        self.resumed = True
        ours = marker is not None and marker.get("run_id") == previous.id
        self._resume_step = s.resume_step if s.resume_step is not None else (marker["step"] if ours else None)
        checkpoint_offset = marker.get("log_offset") if ours else None
        self.id, self.path, self.project = previous.id, previous.path, previous.project
        self.name = s.name or previous.name
        self.tags = tuple(dict.fromkeys((*previous.tags, *self.tags)))
        self.config = {**previous.config, **self.config}
        self._last_values = {k: v for k, v in previous._stored_summary.items() if isinstance(v, (int, float))}
        self._step = self._resume_step if self._resume_step is not None else resume_mod.end_step(previous)
        first = (previous.meta.get("attempts") or [previous.meta])[0]
        for key in ("start_time", "start_timestamp"):  # the run began with its first attempt
            if isinstance(first, dict) and key in first:
                self.meta[key] = first[key]
        self.meta["attempts"] = resume_mod.attempts(previous, {**self.meta, "start_time": meta_mod.iso(self.start_time),
                                                               "start_timestamp": self.start_time},
                                                    self._step, self._resume_step, resume_mod.log_offset(self.path),
                                                    checkpoint_offset if type(checkpoint_offset) is int else None)

    def _record(self) -> dict[str, Any]:
        return {"format": store.FORMAT_VERSION, "id": self.id, "name": self.name, "project": self.project,
                "tags": list(self.tags), "status": self.status, "config": self.config,
                "meta": self.meta, "summary": self.summary}

    def _write_record(self, final: bool = False) -> None:
        self.files.write_record(self._record(), final)  # never raises: errors go to store_errors

    def _store_meta(self) -> None:
        """What the store could not write, per file, in meta["store_errors"]; values the log
        could not store added to meta["dropped_values"]."""
        errors = {name: e for name, e in self.files.errors.items() if e}
        logs = [getattr(self.pipeline, "log", None)]  # the run's log, or the local sink's
        logs += [getattr(w.sink, "log", None) for w in getattr(self.pipeline, "workers", ())]
        for log in logs:
            if isinstance(log, EventLog):
                if log.errors:
                    errors[store.EVENTS_FILE] = dict(log.errors)
                if log.dropped_values:
                    self.meta["dropped_values"] = self.meta.get("dropped_values", 0) + log.dropped_values
        if errors:
            self.meta["store_errors"] = errors

    def finish(self, status: str = "finished", exc: BaseException | None = None) -> None:
        """End the run: hand off what is left, wait for the sinks, record the final status.

        SIGINT and SIGTERM arriving meanwhile wait until the record is written (a signal cannot
        leave a run half-ended: `running` on disk, read back `crashed`), then act."""
        with _state.lock:
            if self._finished or self._forked:
                return
            self._finished = True
            _state.remove(self)
        with process.deferred_signals():
            try:
                self._end(status, exc)
            finally:
                process.hooks.release()

    def _end(self, status: str, exc: BaseException | None) -> None:
        for hook in reversed(self._on_finish):
            try:
                hook(self)
            except Exception as e:  # noqa: BLE001 -- instrumentation must not mask the run's end
                print(self._redactor.text(f"autolog: while ending the run: {type(e).__name__}: "
                                          f"{validate.safe_str(e)}"), file=sys.stderr)
        epochs = self._epochs
        if epochs.aggregates or (epochs.active and not epochs.ended):
            self._close_epoch()  # the run's end ends its last epoch
        end = time.time()
        self.meta.update(end_time=meta_mod.iso(end), end_timestamp=end,
                         duration=time.monotonic() - self._start_mono, step=self._step)
        failure = None
        if exc is not None:
            failure = self._redactor.deep(meta_mod.exception_record(exc))
            self.meta.update(failure)
        if self.coordinator is not None:
            status = self._finish_distributed(status, failure)
        elif self._sync_pending or any(r.pending() for r in self._reducers):
            self._reduce_point()
        self.status = status
        if self.resumed:
            resume_mod.close_attempt(self.meta, status, self._step)
        if self.is_follower:
            self.buffer.stage(self._step)  # drop: followers write nothing
            return
        self._handoff(force=True)
        self.pipeline.close(self._result, self.settings.close_timeout)
        if self.capture is not None:
            user_warnings.flush_warnings()  # warnings the writer found, told on the user's line
        self.meta.update(self.pipeline.meta())
        self._store_meta()
        self.meta = self._redactor.deep(self.meta)  # sink and capture errors may quote a secret
        self.summary = {**self._last_values, **self.summary}
        self._write_record(final=True)
        lock_fd, self._lock_fd = self._lock_fd, None  # None first: a fork must never close the
        os.close(lock_fd)                              # number, reused by another file by then

    def _finish_distributed(self, status: str, failure: dict[str, Any] | None) -> str:
        """The end of a run in a multi-rank job: the last reduction point when every rank ends
        cleanly; otherwise the failing rank leaves its exception for rank 0 to record."""
        if status == "finished":
            try:
                self._reduce_point()
            except distributed.DistributedMismatchError as err:
                self.meta["dist_error"] = str(err)
                status = "failed"
                peer = self.coordinator.peer_failure()
                self.meta.update(peer or {"exception_type": type(err).__qualname__, "exception_message": str(err)})
            return status
        self._sync_pending.clear()
        if failure is not None and status == "failed":
            self.coordinator.report_failure(failure)
        if not self.is_follower:
            peer = self.coordinator.peer_failure()
            if peer is not None:
                own = {k: self.meta.pop(k) for k in ("exception_type", "exception_message", "traceback") if k in self.meta}
                if own:
                    self.meta["rank0_exception"] = own
                self.meta["failed_rank"] = peer.pop("rank")
                self.meta.update(peer)
                return "failed"
        return status

    def _result(self) -> RunResult:
        """Built on the writer thread once every batch has been seen, so the summary is whole."""
        return RunResult(status=self.status, summary={**self._last_values, **self.summary},
                         meta=self._redactor.deep(dict(self.meta)), config=dict(self.config),
                         series=frozenset(self._last_values))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        finish_for_exception(self, exc)
        return False

    def _after_fork_in_child(self) -> None:
        """In a forked child (a DataLoader worker) the run is inert: it writes nothing."""
        self._forked = True
        self.buffer.reset_after_fork()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            try:
                os.close(lock_fd)  # the parent still holds the lock through its own descriptor
            except OSError:
                pass

    # ------------------------------------------------------------------ steps and hand-offs
    @property
    def step(self) -> int:
        """Optimizer steps completed in this run."""
        return self._step

    @property
    def finished(self) -> bool:
        """Whether the run has ended (or is ending)."""
        return self._finished

    def on_finish(self, hook: Callable[["Run"], None]) -> None:
        """`hook(run)` when the run ends, before its last hand-off (last added, first called)."""
        self._on_finish.append(hook)

    def on_handoff(self, hook: Callable[["Run"], None]) -> None:
        """`hook(run)` on the training thread just before each hand-off stages the buffer."""
        self._handoff_hooks.append(hook)

    def on_prepare(self, hook: Callable[[Batch], None]) -> None:
        """`hook(batch)` on the writer thread with each resolved batch, before the log."""
        self._prepare_hooks.append(hook)

    def add_reducer(self, reducer: Any) -> None:
        """A reducer of automatic capture, run at every reduction point while ``pending()``."""
        self._reducers.append(reducer)

    def media(self, kind: str, name: str, data: Any, step: int) -> None:
        """A media record for the next hand-off (no check: the capture's own records)."""
        if not (self._finished or self._forked):
            self.buffer.add_media(MediaRecord(kind=kind, name=name, step=step, wall_time=time.time(), data=data))

    def advance_step(self) -> None:
        """Called after every optimizer step; hands off every `log_every` steps."""
        if self._epochs.active:
            self.buffer.scalar("epoch", self._step, float(self._epochs.index), time.time())
        self._step += 1
        self._optimizer_seen = True
        if self._keys_at_step:
            self._keys_at_step.clear()
        if self._step % self._log_every == 0:
            if self._sync_pending or any(r.pending() for r in self._reducers):
                self._reduce_point()
            self._handoff()
        else:
            self.maybe_flush()

    def maybe_flush(self) -> None:
        """Hand off when `flush_secs` have passed since the last hand-off."""
        if time.monotonic() >= self._flush_due and not self._finished:
            self._handoff()

    def flush(self, wait: bool | str = False, timeout: float | None = None) -> bool:
        """Hand everything buffered to the writer; with `wait`, block until every sink wrote it;
        with ``wait="log"``, until the run's log holds it (what to do when a checkpoint is saved:
        a kill after that loses nothing recorded before it).

        Returns False when `wait` timed out (a stalled sink, or disk)."""
        if wait not in (False, True, "log"):
            raise ValueError(f"run.flush: wait: expected True, False or \"log\", got {wait!r}")
        if self._finished or self._forked:
            return True
        self._handoff(force=True)
        if wait:
            return self.pipeline.wait(self.settings.close_timeout if timeout is None else timeout,
                                      sinks=wait != "log")
        return True

    def _reduce_device(self) -> torch.device:
        """Where collectives take their tensors: the current CUDA device under NCCL, else the CPU."""
        backend = self.dist.backend or ""
        return torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")

    def _reduce_point(self) -> None:
        """Reduce the values logged with ``sync_dist=True`` across ranks (one collective), then
        the pending reducers' (sharded watch statistics: two collectives)."""
        with self.buffer._lock:
            entries, self._sync_pending = self._sync_pending, []
        for reducer in self._reducers:
            if reducer.pending():  # the synced values travel in its collectives: two in all
                reducer.reduce(self.coordinator, self._reduce_device(), entries)
                entries = []
        if not entries:
            return
        if self.coordinator is None:  # a single process: the values are already "reduced"
            reduced: list[float] | None = [v for _n, _s, v, _o in entries]
        else:
            reduced = self.coordinator.reduce(entries, self._reduce_device())
        if reduced is not None and not self.is_follower:
            wall = time.time()
            for (name, step, _v, _op), value in zip(entries, reduced):
                self.buffer.scalar(name, step, value, wall)

    def log_synced(self, name: str, step: int, value: Any, reduce: str = "mean") -> None:
        """Record a value to be reduced across ranks at the next reduction point."""
        with self.buffer._lock:
            self._sync_pending.append((name, step, value, reduce))

    def _handoff(self, force: bool = False) -> None:
        self._last_handoff = time.monotonic()
        self._flush_due = self._last_handoff + self.settings.flush_secs
        # Atomic with respect to signals: a Ctrl-C or SIGTERM arriving while the buffer is taken
        # and submitted waits for the batch to be in the pipeline, so it cannot be lost between.
        with process.deferred_signals():
            for hook in self._handoff_hooks:
                hook(self)
            staged = self.buffer.stage(self._step)
            if staged is not None:
                self.flush_count += 1
                self.pipeline.submit(staged)

    def _prepare(self, batch: Batch) -> None:
        """On the writer thread: write media files, track last values, persist config changes.

        Each step is guarded: a failing hook or media file costs only itself (counted in
        ``meta["writer_errors"]``), never the batch."""
        for hook in self._prepare_hooks:
            try:
                hook(batch)
            except Exception as exc:  # noqa: BLE001
                self.pipeline.writer_error("prepare hook", exc)
        if batch.columns is not None and len(batch.columns):
            self._last_values.update(batch.columns.last_values())
        scalars = batch.scalars
        self._last_values.update(zip(map(_NAME, scalars), map(_VALUE, scalars)))  # C-level, no loop
        if batch.media:
            stored = []
            for record in batch.media:
                try:
                    stored.append(self._store_media(record))
                except Exception as exc:  # noqa: BLE001 -- that record is lost, nothing else
                    self.pipeline.writer_error(f"{record.kind} {record.name!r}", exc)
            batch.media = stored
        if batch.config:
            try:
                self._write_record()
            except OSError as exc:
                self.pipeline.writer_error("run.json", exc)

    def _store_media(self, record: MediaRecord) -> MediaRecord:
        if record.kind in ("image", "figure"):
            self._media_count += 1
            rel = self.files.write_png(f"{safe_component(record.name, 'image')}_{record.step}_{self._media_count}",
                                       record.data)  # None when it could not be written (counted)
            return dataclasses.replace(record, path=rel)
        return record

    # ------------------------------------------------------------------ logging
    def _step_for(self, step: int | None, names: list[str]) -> int:
        """The step of values logged under `names` (`step`: None or an already checked step)."""
        if step is None:
            if not self._optimizer_seen and any(n in self._keys_at_step for n in names):
                if self._epochs.active:
                    self.buffer.scalar("epoch", self._step, float(self._epochs.index), time.time())
                self._step += 1  # no optimizer in this run: a repeated key starts a new step
                self._keys_at_step.clear()
                if self._step % self.settings.log_every == 0:
                    self._handoff()
            self._keys_at_step.update(names)
            return self._step
        return step

    def log(self, data: Mapping[str, Any] | str, value: Any = None, *, step: int | None = None,
            on_step: bool = True, on_epoch: bool = False, reduce: str = "mean", prog_bar: bool = False,
            logger: bool = True, sync_dist: bool = False) -> None:
        """Record scalars: ``log({"val/acc": 0.9})``, ``log("val/acc", 0.9)`` or
        ``log("performance", {"acc": a, "recall": r})`` (``performance/acc``, ...).

        Nested dicts are flattened with "/". Tensors stay on their device until the next
        hand-off. Everything is checked before anything is recorded. The options mean what they
        mean in Lightning's ``self.log``: see `autolog.log`.
        """
        if reduce not in distributed.REDUCE_OPS:
            raise ValueError(f"autolog.log: reduce: expected one of {', '.join(distributed.REDUCE_OPS)}, got {reduce!r}")
        if not (on_step or on_epoch):
            raise ValueError("autolog.log: on_step and on_epoch are both False: the value would be recorded nowhere")
        items = validate.metrics(data, value)
        if step is not None:
            step = validate.step(step)  # checked before anything is recorded
        if on_epoch:
            for name, _v in items:
                self._epochs.check(name, reduce)
        if self._finished or self._forked or not items or (self.is_follower and not sync_dist):
            return
        if on_step:
            step_items = [(f"{name}_step", v) for name, v in items] if on_epoch else items
            names = [n for n, _ in step_items]
            if "epoch" in names and not self._epochs.external:  # the user's (or a framework's) own wins
                self._epochs_external()
            step = self._step_for(step, names)
        elif step is None:
            step = self._step
        if on_epoch:  # aggregated on the device; recorded when the epoch ends (`epoch_end`)
            add = self._epochs.add
            with self.buffer._lock:  # `log` may be called from any thread
                for name, v in items:
                    add(name, v, step, reduce, on_step, logger, prog_bar, sync_dist)
            if not on_step:
                return
            items = step_items
        self._put(items, step, time.time(), logger, prog_bar, sync_dist, reduce)
        self.maybe_flush()

    def _put(self, items: list[tuple[str, Any]], step: int, wall: float, logger: bool, prog_bar: bool,
             sync_dist: bool, reduce: str) -> None:
        """Values to the buffer: reduced across ranks first with `sync_dist` (in a job of several
        ranks), to the console bar only without `logger`."""
        if not logger:
            if not self.is_follower:  # the bar shows rank 0's values: a live view, never reduced
                self.buffer.bar_scalars_from(items, step, wall)
            return
        if prog_bar:
            self.buffer.mark_prog_bar([n for n, _ in items])
        if sync_dist and self.dist.world_size > 1:
            for name, v in items:
                self.log_synced(name, step, v, reduce)
        elif not self.is_follower:
            self.buffer.scalars_from(items, step, wall)

    # ------------------------------------------------------------------ epochs
    @property
    def epoch(self) -> int:
        """The current epoch (0 until the first epoch ends)."""
        return self._epochs.index

    def epoch_end(self) -> None:
        """End the current epoch now: each name logged with ``on_epoch=True`` in it is recorded
        at the step of its last value, and the ``epoch`` series (the epoch at each step) starts or
        goes on. For loops without a DataLoader the capture can follow (see `autolog.epoch_end`)."""
        if self._finished or self._forked:
            return
        epochs = self._epochs
        if not epochs.active:
            self._activate_epochs(epochs.start_step)
        self._close_epoch()
        epochs.ended = True  # the training loader's next pass begins the next epoch, it ends none

    def loader_epoch(self, start_step: int | None = None) -> None:
        """The capture saw the training DataLoader's iteration begin (`start_step`: the step at
        its first iteration, given once, when the loader is recognised)."""
        epochs = self._epochs
        if self._finished or self._forked or epochs.external:
            return
        if start_step is not None:
            if not epochs.active:
                self._activate_epochs(start_step)
            return
        if epochs.ended:
            epochs.ended = False
            epochs.start_step = self._step
            return
        self._close_epoch()

    def _epochs_external(self) -> None:
        """The user or a framework records its own ``epoch`` series: the automatic one stops, and
        its points still in the buffer (not yet handed off) are taken back."""
        epochs = self._epochs
        epochs.external, epochs.active = True, False
        with self.buffer._lock:
            self.buffer.scalars = [p for p in self.buffer.scalars if p[0] != "epoch"]

    def _activate_epochs(self, start_step: int) -> None:
        """Epochs are known from now on: the ``epoch`` series, from the epoch's first step."""
        epochs = self._epochs
        if epochs.external:
            return
        epochs.active = True
        epochs.start_step = min(start_step, self._step)
        wall = time.time()
        for s in range(epochs.start_step, self._step):  # the steps of this epoch done so far
            self.buffer.scalar("epoch", s, float(epochs.index), wall)

    def _close_epoch(self) -> None:
        """Record the epoch's aggregates, each at the step of its last value (in a step, before
        ``optimizer.step()`` as in Lightning's ``training_step``: the epoch's last step, where
        Lightning records them); the next epoch begins here."""
        epochs = self._epochs
        with self.buffer._lock:
            closed = epochs.close()
            epochs.start_step = self._step
            epochs.ended = False
        wall = time.time()
        for name, agg, value in closed:
            self._put([(name, value)], agg.step, wall, agg.logger, agg.prog_bar, agg.sync_dist, agg.op)

    def _media(self, kind: str, name: str, data: Any, step: int | None) -> None:
        what = f"autolog.log_{kind}"
        name = validate.name(name, what)
        step = self._step if step is None else validate.step(step, what)
        if self._finished or self._forked:
            return
        self.buffer.add_media(MediaRecord(kind=kind, name=name, step=step, wall_time=time.time(), data=data))
        self.maybe_flush()

    def log_histogram(self, name: str, values: Any, step: int | None = None, bins: int = 64) -> None:
        """A histogram of `values` (see `autolog.log_histogram`): binned now, on their device."""
        what = "autolog.log_histogram"
        name = validate.name(name, what)
        tensor = validate.histogram_values(name, values, what)
        bins = validate.bins(bins, what)
        step = self._step if step is None else validate.step(step, what)
        if self._finished or self._forked or self.is_follower:
            return
        from autolog.pipeline import stats  # watch's kernel: device ops only, nothing read back

        counts, low, high = stats.histogram(tensor, bins)
        self.buffer.histogram(name, step, counts, low, high, time.time())
        self.maybe_flush()

    def log_image(self, name: str, image: Any, step: int | None = None) -> None:
        """An image (HW/HWC/CHW array or tensor, or PIL image), stored as PNG in the run."""
        self._media("image", name, media_mod.image_array(image, validate.name(name, "autolog.log_image")), step)

    def log_figure(self, name: str, figure: Any, step: int | None = None, close: bool = False) -> None:
        """A matplotlib figure, rendered now and stored as PNG; `close` closes it afterwards."""
        array = media_mod.figure_array(figure, name)
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)
        self._media("figure", name, array, step)

    def log_text(self, name: str, text: str, step: int | None = None) -> None:
        """A text (markdown in TensorBoard); secrets in known formats are masked."""
        name = validate.name(name, "autolog.log_text")
        self._media("text", name, self._redactor.text(validate.text(text, f"autolog.log_text {name!r}")), step)

    def backend(self, name: str, timeout: float | None = None) -> Any:
        """The backend object of the run's sink called `name`, for what autolog does not wrap:
        ``"tensorboard"`` gives a ``torch.utils.tensorboard.SummaryWriter`` writing its own event
        file into the sink's log directory, ``"wandb"`` the sink's W&B run; None when the run has
        no such sink (or it has none, or could not open within `timeout` seconds, default the
        run's ``close_timeout``), on ranks other than 0, and in disabled runs.

        Everything you call on it runs on your thread at its own cost, at once: it does not go
        through the run's log (so ``autolog sync`` cannot replay it) and it converts tensors
        the way that library does (a ``.cpu()``, a device sync, per call). See the README's
        "Coming from TensorBoard, W&B or Lightning" for what is safe to call on each.
        """
        if not isinstance(name, str):
            raise TypeError(f"Run.backend: expected a sink name (str), got {type(name).__name__}")
        for follower in getattr(self.pipeline, "followers", ()):
            if follower.sink.name == name:
                wait = self.settings.close_timeout if timeout is None else timeout
                if not follower.opened.wait(wait):
                    return None
                return follower.sink.backend()
        return None

    def update_config(self, values: Mapping[str, Any] | Any) -> None:
        """Add or change config entries during the run (flattened and redacted like the rest)."""
        flat = self._redactor.config(config_mod.flatten(values))
        self.config.update(flat)
        self.buffer.update_config(flat)

    def set_summary(self, values: Mapping[str, Any]) -> None:
        self.summary.update(values)

    def __repr__(self) -> str:
        return f"<autolog.Run {self.project}/{self.id} {self.status} step={self._step}>"


class _NullPipeline:
    """A follower's pipeline: nothing goes anywhere."""

    closed = False

    def submit(self, staged: Any) -> None:
        pass

    def wait(self, timeout: float, sinks: bool = True) -> bool:
        return True

    def close(self, make_result: Any, timeout: float) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {}

    def writer_error(self, what: str, exc: BaseException) -> None:
        pass


class NullRun:
    """What `mode="disabled"` gives: every method does nothing, and nothing is written.

    While open it sits on the run stack so that `autolog.log` and nested tracked calls are
    silent no-ops; `current_run()` still says None. It implements `RunPort` (with no capture)
    and the public methods of `Run`, each doing nothing."""

    id = name = project = path = None
    status = "disabled"
    step = 0
    epoch = 0
    capture = buffer = settings = dist = None  # never read: a disabled run has no capture
    flush_count = 0
    finished = False
    is_follower = False
    resumed = False

    def __init__(self) -> None:
        self.config: dict = {}
        self.summary: dict = {}
        self.meta: dict = {}
        _state.push(self)

    def finish(self, *args: Any, **kwargs: Any) -> None:
        _state.remove(self)

    def flush(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def backend(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    log_image = log_figure = log_text = log_histogram = update_config = set_summary = log
    epoch_end = advance_step = log_synced = media = loader_epoch = log
    on_finish = on_handoff = on_prepare = add_reducer = log

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.finish()
        return False


def finish_for_exception(run: "Run | NullRun", exc: BaseException | None) -> None:
    """Finish `run` with the status an exception (or its absence) means. Never raises: the
    user's exception (or return value) must come out of the call unchanged."""
    try:
        _finish_for_exception(run, exc)
    except Exception as err:  # noqa: BLE001
        print(f"autolog: the run could not end cleanly: {type(err).__name__}: "
              f"{scrub(validate.safe_str(err))}", file=sys.stderr)


def _finish_for_exception(run: "Run | NullRun", exc: BaseException | None) -> None:
    if isinstance(run, NullRun):
        run.finish()
    elif exc is None:
        run.finish("finished")
    elif isinstance(exc, KeyboardInterrupt):
        run.finish("interrupted", exc)
    elif isinstance(exc, SystemExit) and exc.code in (None, 0):
        run.finish("finished")
    else:
        run.finish("failed", exc)


def summary_from_return(value: Any) -> dict[str, float]:
    """The numeric parts of a train function's return value, for the summary."""
    out: dict[str, float] = {}

    def add(name: str, v: Any, depth: int = 0) -> None:
        if depth > 6:  # a recursive or very deep return value: the rest is left out
            return
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_meta and v.layout == torch.strided \
                and not v.is_complex():
            v = v.item()
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                out[name] = float(v)
            except OverflowError:  # an int beyond float64: left out
                pass
        elif isinstance(v, Mapping):
            for k, item in v.items():
                key = validate.clean_text(validate.safe_str(k))
                add(f"{name}/{key}" if name else key, item, depth + 1)
        elif isinstance(v, (list, tuple)) and len(v) <= 64:
            for i, item in enumerate(v):
                add(f"{name or 'return'}/{i}", item, depth + 1)

    if isinstance(value, Mapping):
        add("", value)
    else:
        add("return", value)
    return out


def _end_for_signal(signum: int) -> None:
    """SIGTERM (or a signal whose default action ends the process): every open run ends
    `interrupted` with everything buffered written, before the signal acts."""
    for run in list(reversed(_active)):
        run.meta["signal"] = signal.Signals(signum).name
        run.finish("interrupted")


def _end_for_exception(exc: BaseException) -> None:
    """An exception reached the top level (outside `track`/`with`, which handle their own)."""
    for run in list(reversed(_active)):
        finish_for_exception(run, exc)


def _at_exit() -> None:
    """Interpreter exit: runs started with `autolog.run()` and never finished end here."""
    for run in list(reversed(_active)):
        run.finish("finished")


_forked_child = False


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True
    for run in list(_all_runs):
        run._after_fork_in_child()
    _state.reset_after_fork()


process.hooks.bind(process.Callbacks(end_for_signal=_end_for_signal, end_for_exception=_end_for_exception,
                                     end_at_exit=_at_exit, after_fork_in_child=_after_fork_in_child))


