"""One run's automatic capture: receives the patched calls and hooks, records into the run's
buffer, advances the run's step.

The step: the first optimizer that steps in the run is the primary one (optimizer 0); the run's
step advances after each of its steps. If it is garbage-collected, the next optimizer that
steps becomes the primary. The loss, ``perf/*`` and the hyperparameters of a step are recorded
at the step number before it advances (the loss whose backward precedes the first step is at
step 0).
"""
from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import torch

from autolog.capture import patches
from autolog.capture import watch as watch_mod
from autolog.capture.errors import NonFiniteError
from autolog.capture.loss import LossTracker, is_loss
from autolog.capture.nonfinite import NonFiniteMonitor
from autolog.capture.optim import OptimizerState
from autolog.capture.safe import Guard
from autolog.capture.timing import StepTimer

LOSS = "train/loss"


class Capture:
    """The automatic capture of one run (``run._capture``)."""

    @classmethod
    def start(cls, run: Any) -> "Capture | None":
        """Set up capture for `run` per its ``capture=`` setting; undone when the run ends."""
        pending = watch_mod.take_pending()
        names = run.settings.capture
        if not names:
            if pending:
                warnings.warn("autolog.watch: automatic capture is off in this run (capture=False): "
                              "the models watched before it started are not watched", stacklevel=4)
            return None
        try:
            capture = cls(run, names)
            patches.acquire()
        except Exception as exc:  # noqa: BLE001 -- a run without capture is better than no run
            print(f"autolog: automatic capture could not start; the run goes on without it. "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return None
        run._capture = capture
        run._on_finish.append(capture.finish)
        run._handoff_hooks.append(capture.before_handoff)
        run._prepare_hooks.append(capture.prepare)
        for model, options in pending:
            capture.guard.call("watch", capture.watch, model, options)
        return capture

    def __init__(self, run: Any, names: frozenset[str]) -> None:
        self.run = run
        self.names = names
        self.guard = Guard(run.meta)
        self.loss = LossTracker()
        self.timer = StepTimer()
        self.monitor = NonFiniteMonitor(run)
        self.optimizers: dict[int, OptimizerState] = {}  # id(optimizer) -> state, live ones
        self._seen: list[OptimizerState] = []  # every optimizer of the run, for meta["optimizers"]
        self.primary: OptimizerState | None = None
        self.watched: dict[int, watch_mod.Watched] = {}  # id(unwrapped model) -> entry
        dist = getattr(run, "dist", None)
        self.synced = bool(getattr(run.settings, "sync_dist", False)) and dist is not None and dist.world_size > 1
        self.follower = bool(getattr(run, "is_follower", False))  # a rank > 0: it writes nothing

    # -- loss ----------------------------------------------------------------------------------
    def on_backward(self, tensor: torch.Tensor) -> None:
        """A scalar backward() with the implicit gradient of one ran on `tensor`."""
        if "loss" not in self.names or not is_loss(tensor):
            return
        done = self.loss.add(self.run.step, tensor)
        if done is not None:
            self._record_loss(*done)

    def _record_loss(self, step: int, value: torch.Tensor, wall: float | None = None) -> None:
        run = self.run
        if self.synced:  # the mean over ranks, at the run's next reduction point
            run.log_synced(LOSS, step, value, "mean")
        else:
            run._buffer.scalar(LOSS, step, value, time.time() if wall is None else wall)
        self.monitor.add_loss(step, value)

    def _flush_loss(self, wall: float | None = None) -> None:
        done = self.loss.take()
        if done is not None:
            self._record_loss(*done, wall)

    # -- optimizers ----------------------------------------------------------------------------
    def _optimizer(self, optimizer: Any) -> OptimizerState:
        state = self.optimizers.get(id(optimizer))
        if state is not None and state.ref() is optimizer:
            return state
        if self.primary is None or self.primary.ref() is None:
            index = 0
        else:
            index = 1 + max((s.index for s in self.optimizers.values()), default=0)
        state = OptimizerState(optimizer, index)
        self.optimizers = {k: s for k, s in self.optimizers.items() if s.ref() is not None}
        self.optimizers[id(optimizer)] = state
        self._seen.append(state)
        if index == 0:
            self.primary = state
        return state

    def on_pre_step(self, optimizer: Any) -> None:
        state = self._optimizer(optimizer)
        if self.watched and not self.follower:
            self.guard.call("watch", self._watch_pre, state, optimizer)

    def _watch_pre(self, state: OptimizerState, optimizer: Any) -> None:
        ids = state.param_ids(optimizer)
        step = self.run.step
        for key, watched in list(self.watched.items()):
            if not watched.pre_step(state, ids, step):
                watched.remove()
                del self.watched[key]

    def on_post_step(self, optimizer: Any) -> None:
        state = self._optimizer(optimizer)
        run = self.run
        step = run.step
        wall = time.time()  # one wall time for the step's points: one TensorBoard event per step
        if "optimizer" in self.names and state.hparam_step != step:
            state.hparam_step = step
            self.guard.call("optimizer", self._record_hparams, state, optimizer, step, wall)
        if self.watched and not self.follower:
            self.guard.call("watch", self._watch_post, state, optimizer)
        state.steps += 1
        if state is not self.primary:
            return
        if "loss" in self.names:
            self.guard.call("loss", self._flush_loss, wall)
        if "timing" in self.names:
            self.guard.call("timing", self._tick, state, step, wall)
        for watched in self.watched.values():
            watched.samples = 0
        handoffs = run.flush_count
        run.advance_step()
        if run.flush_count != handoffs and self.monitor.policy == "raise":
            try:
                self.monitor.raise_if_bad()
            except NonFiniteError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.guard.fail("nonfinite", exc)

    def _record_hparams(self, state: OptimizerState, optimizer: Any, step: int, wall: float) -> None:
        items = state.hparams(optimizer)
        if items:
            self.run._buffer.scalars_from(items, step, wall)

    def _watch_post(self, state: OptimizerState, optimizer: Any) -> None:
        ids = state.param_ids(optimizer)
        for watched in self.watched.values():
            watched.post_step(state, ids)

    def _tick(self, state: OptimizerState, step: int, wall: float) -> None:
        first = next(iter(self.watched.values()), None)
        samples = first.samples if first is not None else 0
        if state.device is None:
            optimizer = state.ref()
            if optimizer is not None:
                state.param_ids(optimizer)
        self.timer.tick(self.run._buffer, step, samples, state.device, wall)

    # -- watch ---------------------------------------------------------------------------------
    def watch(self, model: torch.nn.Module, options: dict[str, Any]) -> None:
        inner = watch_mod.unwrap(model)
        self.monitor.policy = options["on_nan"]
        existing = self.watched.get(id(inner))
        if existing is not None and existing.ref() is inner:
            existing.configure(options)
            return
        if options["name"]:
            prefix = options["name"] + "/"
        else:
            used = {w.prefix for w in self.watched.values()}
            prefix = "" if "" not in used else type(inner).__name__ + "/"
            n = 1
            while prefix in used:
                n += 1
                prefix = f"{type(inner).__name__}{n}/"
        self.watched[id(inner)] = watch_mod.Watched(self, model, options, prefix)

    def unwatch(self, model: torch.nn.Module | None) -> None:
        if model is None:
            keys = list(self.watched)
        else:
            inner = watch_mod.unwrap(model)
            keys = [k for k, w in self.watched.items() if w.ref() is inner]
        for key in keys:
            self.watched.pop(key).remove()

    # -- run hooks -----------------------------------------------------------------------------
    def before_handoff(self, run: Any) -> None:
        """Training thread, before each hand-off (where reading values back is allowed): send the
        NaN findings and CUDA timings along, trace the graphs of models seen since the last."""
        self.guard.call("nonfinite", self.monitor.stage, run._buffer, run.step)
        self.guard.call("timing", self.timer.stage, run._buffer, run.step)
        for watched in self.watched.values():
            if watched._graph_input is not None:
                self.guard.call("graph", watched.flush_graph)

    def prepare(self, batch: Any) -> None:
        """Writer thread, each batch: CUDA timings to scalars; NaN findings to meta/warning."""
        self.guard.call("timing", StepTimer.prepare, batch)
        self.guard.call("nonfinite", self.monitor.prepare, batch)

    def finish(self, run: Any) -> None:
        """The run ends: record the last step's loss, remove every hook and patch."""
        try:
            if "loss" in self.names:
                self.guard.call("loss", self._flush_loss)
            self.unwatch(None)
            if self._seen:
                run.meta["optimizers"] = [s.describe() for s in self._seen]
        finally:
            patches.release()
