"""One run's automatic capture: receives the patched calls and hooks, records into the run's
buffer, advances the run's step.

The step: the first optimizer that steps in the run is the primary one (optimizer 0); the run's
step advances after each of its steps. If it is garbage-collected, the next optimizer that
steps becomes the primary. The loss of a step is the objective whose gradient the step applies
(`autolog.capture.loss`), recorded, like ``perf/*`` and the hyperparameters, at the run's step
before it advances, in the stepping optimizer's series (`autolog.capture.optim`). A run without
any optimizer (none alive when its first backward runs) is *stepless*: each scalar backward
completes one step, until an optimizer is created or steps.
"""
from __future__ import annotations

import gc
import sys
import time
import warnings
from time import perf_counter
from typing import Any

import torch

from autolog.capture import patches
from autolog.capture import watch as watch_mod
from autolog.capture.epochs import LoaderEpochs
from autolog.capture.errors import NonFiniteError
from autolog.capture.loss import FirstCall, Objective
from autolog.capture.nonfinite import NonFiniteMonitor
from autolog.capture.sharded import ShardedStats
from autolog.capture.optim import OptimizerState, given_name, inner_optimizer
from autolog.capture.safe import Guard
from autolog.capture.timing import StepTimer
from autolog.core import user_warnings
from autolog.core.port import RunPort
from autolog.core.user_warnings import flush_warnings
from autolog.core.redact import scrub
from autolog.metrics import GRAD_NORM, LOSS
from autolog.pipeline.records import StepNames


def optimizer_alive() -> bool:
    """Whether a torch optimizer exists in this process. Cheap when no optimizer class was ever
    instantiated (torch marks a class's ``step`` as hooked at its first instance); else one scan
    of the garbage collector's objects (once per run, at its first backward)."""
    pending, classes, hooked = [torch.optim.Optimizer], set(), False
    while pending:
        cls = pending.pop()
        classes.add(cls)
        hooked = hooked or bool(getattr(vars(cls).get("step"), "hooked", False))
        pending.extend(cls.__subclasses__())
    if not hooked:
        return False
    return any(type(obj) in classes for obj in gc.get_objects())  # type(): no __class__ property


class _Stepless:
    """The stand-in for an optimizer in a stepless run (what watch and the timer ask of one)."""

    index = 0
    label = ""
    loss_name = LOSS
    names = StepNames(LOSS, GRAD_NORM)
    device: torch.device | None = None


class Capture:
    """The automatic capture of one run (``run.capture``), talking to it through `RunPort`."""

    @classmethod
    def start(cls, run: RunPort) -> "Capture | None":
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
            print(scrub(f"autolog: automatic capture could not start; the run goes on without it. "
                        f"{type(exc).__name__}: {exc}"), file=sys.stderr)
            return None
        run.capture = capture
        run.on_finish(capture.finish)
        run.on_handoff(capture.before_handoff)
        run.on_prepare(capture.prepare)
        for model, options in pending:
            capture.guard.call("watch", capture.watch, model, options)
        return capture

    def __init__(self, run: RunPort, names: frozenset[str]) -> None:
        self.run = run
        self.buffer = run.buffer  # step rows go to `buffer.rows` (see `autolog.pipeline.buffer`)
        self.names = names
        self.losses = "loss" in names
        self.hparams = "optimizer" in names
        self.timing = "timing" in names
        self.guard = Guard(run.meta, on_fail=self._feature_off)
        self.backward_on = True  # the backward wrapper calls `on_backward` (until "loss" fails)
        # The primary optimizer's state while its steps are usual (`_is_plain`, as of the last
        # step that took the general path): its steps take `_plain_step`; else None.
        self.quick: OptimizerState | None = None
        # id of that optimizer while no model is watched either: its pre-step has nothing to do
        # unless the step has a closure (0: none)
        self.quick_pre = 0
        self.watch_post = True  # a watched model has work after this step (see `_watch_pre`)
        self.objective = Objective()  # backward calls since the previous optimizer step
        self.clip_norm: Any = None  # the first clip_grad_norm_ total norm since then
        self.closure: FirstCall | None = None  # the closure of the optimizer step in progress
        self.stepless: bool | None = None  # None: not known before the first backward
        self.post_steps = 0  # optimizer steps seen (GradScaler.step compares it)
        self.batch_samples = 0  # samples of the batches a framework reported since the last step
        self.loaders = LoaderEpochs(run)  # epochs from the training DataLoader
        self.monitor = NonFiniteMonitor(run)
        self.optimizers: dict[int, OptimizerState] = {}  # id(optimizer) -> state, live ones
        self._seen: list[OptimizerState] = []  # every optimizer of the run, for meta["optimizers"]
        self.primary: OptimizerState | None = None
        self._stepless = _Stepless()
        self._stepless_ids: dict[int, frozenset[int]] = {}  # id(watched) -> its parameters' ids
        self.watched: dict[int, watch_mod.Watched] = {}  # id(unwrapped model) -> entry
        dist = getattr(run, "dist", None)
        self.synced = bool(getattr(run.settings, "sync_dist", False)) and dist is not None and dist.world_size > 1
        self.follower = bool(getattr(run, "is_follower", False))  # a rank > 0: it writes nothing
        # sharded watched models: partials of every rank, reduced at the run's reduction points
        self.sharded = ShardedStats(run, self.monitor, self.guard)
        run.add_reducer(self.sharded)

    @property
    def raises(self) -> bool:
        """on_nan="raise": the losses are kept for the check at each hand-off."""
        return self.monitor.raises

    # -- backward and loss ---------------------------------------------------------------------
    def on_backward(self, tensor: torch.Tensor) -> None:
        """A scalar backward() with the implicit gradient of one ran on `tensor`."""
        # (No check that `tensor` is a real floating scalar: a backward with the implicit gradient
        # that returned at all was called on one.)
        if type(tensor) is not torch.Tensor and type(tensor) is not torch.nn.Parameter:
            tensor = _full(tensor)  # a DTensor loss (tensor parallel): its full value
        closure = self.closure
        if closure is not None and closure.inside:
            if closure.collecting:
                closure.segment.add(tensor)
            return  # a later call of the closure (a line search): no step's loss
        if self.losses:
            self.objective.add(tensor)
        if self.stepless is None:
            self.stepless = not optimizer_alive()
        if self.stepless:
            self._backward_step(tensor.device)

    def _record(self, name: str, step: int, value: Any, wall: float) -> None:
        run = self.run
        if self.synced:  # the mean over ranks, at the run's next reduction point
            run.log_synced(name, step, value, "mean")
        else:
            run.buffer.scalar(name, step, value, wall)

    def _record_loss(self, name: str, step: int, wall: float) -> None:
        value = self.objective.take()
        if value is not None:
            self._record(name, step, value, wall)
            self.monitor.add_loss(step, value)

    def on_clip(self, total: Any) -> None:
        """clip_grad_norm_ computed `total` (the norm before clipping): the first of a step is
        the step's ``train/grad_norm``."""
        if not self.losses or not isinstance(total, torch.Tensor):
            return
        total = _full(total)
        if self.stepless and self.run.step > 0:  # after the backward that completed the step
            self._record("train/grad_norm", self.run.step - 1, total.detach(), time.time())
        elif self.clip_norm is None:
            self.clip_norm = total.detach()

    def add_batch(self, batch: Any) -> None:
        """A framework hands a training batch to the model (Lightning's on_train_batch_start)."""
        self.guard.call("timing", self._add_batch, batch)

    def _add_batch(self, batch: Any) -> None:
        self.loaders.off = True  # the framework counts its own epochs
        self.batch_samples += watch_mod.batch_size((batch,), {})

    # -- optimizers ----------------------------------------------------------------------------
    def _optimizer(self, optimizer: Any) -> OptimizerState:
        state = self.optimizers.get(id(optimizer))
        if state is not None and state.ref() is optimizer:
            return state
        if self.primary is None or self.primary.ref() is None:
            index = 0
        else:
            index = 1 + max((s.index for s in self.optimizers.values()), default=0)
        self.optimizers = {k: s for k, s in self.optimizers.items() if s.ref() is not None}
        name = given_name(optimizer)
        if name is not None and any(s.name == name for s in self.optimizers.values()):
            warnings.warn(f"autolog.name_optimizer: two optimizers of the run are named {name!r}; "
                          f"the second one ({type(optimizer).__name__}) uses its index", stacklevel=5)
            name = None
        state = OptimizerState(optimizer, index, name)
        self.optimizers[id(optimizer)] = state
        self._seen.append(state)
        if index == 0:
            self.primary = state
        return state

    def rename(self, optimizer: Any, name: str | None) -> None:
        """`autolog.name_optimizer` in this run: the optimizer's series use `name` from now on."""
        state = self.optimizers.get(id(optimizer))
        if state is not None and state.ref() is optimizer:
            state.rename(name)

    def on_pre_step(self, optimizer: Any, args: tuple, kwargs: dict) -> Any:
        if self.quick_pre == id(optimizer) and len(args) == 1 and not kwargs:  # no closure
            self.closure = None
            return None
        state = self.optimizers.get(id(optimizer))
        if state is None or state.ref() is not optimizer:
            state = self._optimizer(optimizer)
        self.stepless = False
        self.closure = None
        # torch's hooks get the step's (self, *args), kwargs and may return new ones
        closure = args[1] if len(args) > 1 else kwargs.get("closure") if kwargs else None
        if self.watched and (not self.follower or self.sharded.enabled):
            self.guard.call("watch", self._watch_pre, state, optimizer, callable(closure))
        if callable(closure) and self.losses:
            first = self.closure = FirstCall(closure)
            if len(args) > 1:
                return (args[0], first, *args[2:]), kwargs
            return args, {**kwargs, "closure": first}
        return None

    def _watch_pre(self, state: OptimizerState, optimizer: Any, closure: bool = False) -> None:
        self.watch_post = True  # (until every watched model said otherwise)
        ids = state.param_ids(optimizer)
        step = self.run.step
        post = False
        for key, watched in list(self.watched.items()):
            if self.follower and watched.sharded is None:
                continue  # a rank > 0 takes part in sharded models' statistics only
            if not watched.pre_step(state, ids, step, closure):
                watched.remove()
                del self.watched[key]
                continue
            post = post or watched.post_needed
        self.watch_post = post

    def on_skipped_step(self, optimizer: Any) -> None:
        """GradScaler skipped the optimizer's step: its objective and norm applied nothing."""
        self.objective.take()
        self.clip_norm = None
        inner = inner_optimizer(optimizer)
        state = self.optimizers.get(id(inner))
        if state is not None and state.ref() is inner:
            state.skipped += 1

    def on_post_step(self, optimizer: Any) -> None:
        """After an optimizer step: the step's row (loss, clip norm, hyperparameters when they
        changed, clock, samples) appended to the run's buffer in one go, the watched models'
        statistics, then the run's step advances (after the primary optimizer's step)."""
        state = self.quick
        if state is not None and self.closure is None and state.ref() is optimizer:
            self._plain_step(state, optimizer)
            return
        state = self.optimizers.get(id(optimizer))
        if state is None or state.ref() is not optimizer:
            state = self._optimizer(optimizer)
        self.post_steps += 1
        if user_warnings.deferred:
            flush_warnings()
        step = self.run.step
        clock = perf_counter()
        primary = state is self.primary
        feature = "loss"
        try:
            loss = clip = hp = samples = event = None
            closure, self.closure = self.closure, None
            if self.losses:
                if closure is not None:
                    value = closure.result()
                    if value is not None:
                        self.objective.add(value)
                loss = self.objective.take()
                clip, self.clip_norm = self.clip_norm, None
                if self.synced:
                    self._synced(state.names, step, loss, clip)
                    loss = clip = None
                elif loss is not None and self.raises:
                    self.monitor.add_loss(step, loss)
            feature = "optimizer"
            if self.hparams and state.hparam_step != step:
                state.hparam_step = step
                hp = state.step_hparams(optimizer)
            feature = "timing"
            if primary and self.timing:
                samples = self._samples()
                device = state.device if state.device is not None else state.first_device(optimizer)
                if device is not None and device.type == "cuda":
                    event = _cuda_event(device)
            if not self.follower and (loss is not None or clip is not None or hp is not None or samples is not None):
                self.buffer.rows.append((state.names, step, clock, loss, clip, hp, samples, event))
        except Exception as exc:  # noqa: BLE001 -- instrumentation must never break training
            self._fail(feature, exc)
        if self.watched and (not self.follower or self.sharded.enabled):
            self.guard.call("watch", self._watch_post, state, optimizer)
        state.steps += 1
        self.quick = self.primary if self._is_plain() else None
        if primary:
            self.quick_pre = id(optimizer) if self.quick is not None and not self.watched else 0
            self._complete()

    def _plain_step(self, state: OptimizerState, optimizer: Any) -> None:
        """`on_post_step` for the usual step (see `quick`): the same row, in fewer operations."""
        self.post_steps += 1
        if user_warnings.deferred:
            flush_warnings()
        step = self.run.step
        try:
            state.hparam_step = step  # (the primary's step: a new run step each time)
            hp = state.step_hparams(optimizer)
            self.buffer.rows.append((state.names, step, perf_counter(), self.objective.take(), self.clip_norm,
                                     hp, self._samples(), None))
            self.clip_norm = None
        except Exception as exc:  # noqa: BLE001 -- instrumentation must never break training
            self._fail("loss", exc)
        if self.watched and self.watch_post:
            self.guard.call("watch", self._watch_post, state, optimizer)
        state.steps += 1
        self._complete()

    def _is_plain(self) -> bool:
        """Whether steps are usual (`quick`): loss, hyperparameters and step time captured; no
        sharded watched model, no cross-rank reduction, on_nan not "raise", not a rank > 0, the
        primary optimizer's parameters known and not on CUDA (no timing event). A closure is
        checked per step. Computed after each step that took the general path; any change of
        these sets `quick` None until then."""
        primary = self.primary
        return (self.losses and self.hparams and self.timing and not self.synced
                and not self.follower and not self.raises and primary is not None
                and primary.device is not None and primary.device.type != "cuda"
                and all(w.sharded is None for w in self.watched.values()))

    def _samples(self) -> int:
        """Samples of the step that completes now (0: unknown), from the framework or the first
        watched model's inputs."""
        samples = self.batch_samples
        if not samples and self.watched:
            samples = next(iter(self.watched.values())).counter.samples
        return samples

    def _synced(self, names: Any, step: int, loss: Any, clip: Any) -> None:
        """sync_dist: the step's loss and clip norm are means over ranks, reduced at the run's
        next reduction point."""
        if loss is not None:
            self.run.log_synced(names.loss, step, loss, "mean")
            if self.raises:
                self.monitor.add_loss(step, loss)
        if clip is not None:
            self.run.log_synced(names.grad_norm, step, clip, "mean")

    def _fail(self, feature: str, exc: BaseException) -> None:
        """A piece of the step's capture failed: it is off for the rest of the run."""
        self.guard.fail(feature, exc)

    def _feature_off(self, feature: str) -> None:
        """`Guard.fail` turned `feature` off: the flags the per-step path reads follow."""
        self.quick = None
        self.quick_pre = 0
        if feature == "loss":
            self.losses = self.backward_on = False
        elif feature == "optimizer":
            self.hparams = False
        elif feature == "timing":
            self.timing = False

    def _complete(self) -> None:
        """The run's step is complete: samples counted afresh, then the run's step advances (and
        may hand off)."""
        for watched in self.watched.values():
            watched.counter.samples = 0
        self.batch_samples = 0
        if self.loaders.candidate is not None:  # the run's first step after a loader's pass
            self.guard.call("epochs", self.loaders.on_step)
        run = self.run
        handoffs = run.flush_count
        run.advance_step()
        if run.flush_count != handoffs and self.raises:
            try:
                self.monitor.raise_if_bad()
            except NonFiniteError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.guard.fail("nonfinite", exc)

    def _backward_step(self, device: torch.device) -> None:
        """Stepless run: the backward that just ended completes the run's step."""
        step = self.run.step
        clock = perf_counter()
        source = self._stepless
        source.device = device
        feature = "loss"
        try:
            loss = samples = event = None
            if self.losses:
                loss = self.objective.take()
                if self.synced:
                    self._synced(source.names, step, loss, None)
                    loss = None
                elif loss is not None and self.raises:
                    self.monitor.add_loss(step, loss)
            feature = "timing"
            if self.timing:
                samples = self._samples()
                if device.type == "cuda":
                    event = _cuda_event(device)
            if not self.follower and (loss is not None or samples is not None):
                self.buffer.rows.append((source.names, step, clock, loss, None, None, samples, event))
        except Exception as exc:  # noqa: BLE001
            self._fail(feature, exc)
        if self.watched and (not self.follower or self.sharded.enabled):
            self.guard.call("watch", self._watch_backward, step)
        self._complete()  # may raise NonFiniteError at a hand-off

    def _watch_backward(self, step: int) -> None:
        for key, watched in list(self.watched.items()):
            if self.follower and watched.sharded is None:
                continue
            model = watched.ref()
            if model is None:
                watched.remove()
                del self.watched[key]
                continue
            ids = self._stepless_ids.get(id(watched))
            if ids is None or step % watched.every == 0:
                ids = self._stepless_ids[id(watched)] = frozenset(id(p) for p in model.parameters())
            watched.backward_step(self._stepless, ids, step)

    def _watch_post(self, state: OptimizerState, optimizer: Any) -> None:
        ids = state.ids  # as `_watch_pre` found them before this step
        for watched in self.watched.values():
            if not self.follower or watched.sharded is not None:
                watched.post_step(state, ids)

    # -- watch ---------------------------------------------------------------------------------
    def watch(self, model: torch.nn.Module, options: dict[str, Any]) -> None:
        self.quick = None
        self.quick_pre = 0
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
        self.guard.call("nonfinite", self.monitor.stage, run.buffer, run.step)
        for state in self.optimizers.values():
            state.forget_hparams()  # every batch holds each optimizer's hyperparameters once
        for watched in self.watched.values():
            if watched._graph_input is not None:
                self.guard.call("graph", watched.flush_graph)

    def prepare(self, batch: Any) -> None:
        """Writer thread, each batch: CUDA timings to scalars; NaN findings to meta/warning."""
        self.guard.call("timing", StepTimer.prepare, batch)
        self.guard.call("nonfinite", self.monitor.prepare, batch)

    def finish(self, run: Any) -> None:
        """The run ends: record the loss of backward calls no step took (at the run's step, in
        optimizer 0's series), remove every hook and patch."""
        try:
            if self.losses and self.objective:
                name = self.primary.loss_name if self.primary is not None else LOSS
                self.guard.call("loss", self._record_loss, name, run.step, time.time())
            if self.clip_norm is not None:
                name = self.primary.grad_norm_name if self.primary is not None else GRAD_NORM
                self.guard.call("grad_norm", self._record, name, run.step, self.clip_norm, time.time())
                self.clip_norm = None
            self.unwatch(None)
            if self._seen:
                run.meta["optimizers"] = [s.describe() for s in self._seen]
        finally:
            patches.release()


def _full(total: torch.Tensor) -> torch.Tensor:
    """A DTensor (a loss, a total norm) as a plain tensor holding the full value: its local
    value when it is replicated, else ``full_tensor()`` (a reduction over the mesh, made by every
    rank alike since every rank runs the same backward and clip; no host sync)."""
    to_local = getattr(total, "to_local", None)
    if to_local is None:
        return total
    placements = getattr(total, "placements", ())
    if all(p.is_replicate() for p in placements):
        return to_local()
    return total.full_tensor()


def _cuda_event(device: torch.device) -> Any:
    """A timing event recorded on `device`'s current stream (the step's end, read on the writer
    thread long after it completed)."""
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event
