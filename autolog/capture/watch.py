"""`autolog.watch` / `autolog.unwatch`, and what a run keeps per watched model.

Statistics of a watched model are taken at the optimizer steps that update its parameters:
before the step (the weights, and a copy of them) and after it (the gradients the step used --
after it, so that the backward of a closure passed to ``step(closure)``, as Lightning does, is
included -- and the update ratio). They are recorded at the run's step when that optimizer
stepped, on every `log_every`-th step; the NaN/Inf check of the gradients runs at every step.
"""
from __future__ import annotations

import operator
import sys
import time
import warnings
import weakref
from typing import Any

import torch

from autolog import _state
from autolog.capture import sharded
from autolog.pipeline import stats
from autolog.capture.hooks import add_hook, remove_hook
from autolog.capture.nonfinite import POLICIES
from autolog.capture.timing import SampleCounter, batch_size  # noqa: F401 -- batch_size: re-exported

LOGS = ("gradients", "parameters", "all", None)
_STACK_LATER = 64  # up to this many parameters, a step's gradient norms are stacked at the hand-off

_GRAD = operator.attrgetter("grad")
# `Watched.observe_forward` behind torch.compiler.disable, made once torch.compile is in use
_EAGER_HOOK: list[Any] = []


def _observe_eagerly(watched: "Watched", module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    return watched.observe_forward(args, kwargs)


def keep_hook_eager() -> None:
    """Once torch.compile is in use (its import is costly, so we never trigger it), the twin
    the forward hook calls when it is traced."""
    if not _EAGER_HOOK and "torch._dynamo" in sys.modules:
        _EAGER_HOOK.append(torch.compiler.disable(_observe_eagerly))

# watch() called outside a run: attached to the next run that starts (then forgotten).
_pending: list[tuple[weakref.ref, dict[str, Any]]] = []


def watch(model: torch.nn.Module, log: str | None = "gradients", log_every: int | None = None,
          histograms: bool = True, graph: bool = False, on_nan: str = "warn",
          name: str | None = None) -> torch.nn.Module:
    """Record gradient and weight statistics of `model` at its optimizer steps; returns `model`.

    log: "gradients" (``grad_norm/<param>``, ``grad_norm/total``, histograms
    ``gradients/<param>``), "parameters" (``weight_norm/<param>``, ``update_ratio/<param>`` =
    ‖Δw‖/‖w‖ of the step, histograms ``parameters/<param>``), "all", or None (neither: only the
    NaN/Inf alarm, throughput and graph).
    log_every: take them every this many optimizer steps (default: the run's ``log_every``),
    starting at step 0. histograms: also the 64-bin histograms. graph: send the model graph
    (traced on a copy at the first forward call) to the sinks. on_nan: "warn" (default),
    "raise" (`autolog.NonFiniteError` at the next hand-off) or "ignore", for non-finite
    losses and gradients, run-wide (the last watch call sets it). name: prefix for the metric
    names (``grad_norm/<name>/<param>``); by default the first watched model has none and
    later ones use their class name.

    Wrappers are accepted (``torch.compile``, DataParallel, DistributedDataParallel): names
    are the wrapped module's. Watching a model again updates its options (no double hooks).
    Called outside a run, the model is watched by the next run that starts.

    Sharded models (DTensor parameters: FSDP2 ``fully_shard``, HSDP, ``parallelize_module``;
    shard before calling watch): every rank calls watch; the statistics are those of the full
    parameters and gradients, reduced across ranks at the hand-offs (`autolog.capture.sharded`),
    and recorded by rank 0 under the user's parameter names.
    """
    options = _options(model, log, log_every, histograms, graph, on_nan, name)
    active = _state.current()
    if active is None:
        _pending[:] = [(ref, opts) for ref, opts in _pending if ref() is not None and ref() is not model]
        _pending.append((weakref.ref(model), options))
        return model
    capture = active.capture
    if capture is None:
        if active.status != "disabled":
            warnings.warn("autolog.watch: automatic capture is off in this run (capture=False): "
                          "the model is not watched", stacklevel=2)
        return model
    capture.watch(model, options)
    return model


def unwatch(model: torch.nn.Module | None = None) -> None:
    """Stop watching `model` (None: every watched model); its hooks are removed."""
    _pending[:] = [(ref, opts) for ref, opts in _pending
                   if model is not None and ref() is not None and ref() is not model]
    capture = _state.capture()
    if capture is not None:
        capture.unwatch(model)


def take_pending() -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """The models watched outside a run (still alive), forgotten here."""
    items = [(ref(), opts) for ref, opts in _pending]
    _pending.clear()
    return [(model, opts) for model, opts in items if model is not None]


def _options(model: Any, log: Any, log_every: Any, histograms: Any, graph: Any, on_nan: Any,
             name: Any) -> dict[str, Any]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"autolog.watch: expected a torch.nn.Module, got {type(model).__name__}")
    if log not in LOGS:
        raise ValueError(f"autolog.watch: log: expected one of {LOGS}, got {log!r}")
    if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1):
        raise ValueError(f"autolog.watch: log_every: expected a positive integer or None, got {log_every!r}")
    if on_nan not in POLICIES:
        raise ValueError(f"autolog.watch: on_nan: expected one of {POLICIES}, got {on_nan!r}")
    if name is not None and (not isinstance(name, str) or not name.strip("/")):
        raise ValueError(f"autolog.watch: name: expected a non-empty string, got {name!r}")
    return {"log": log, "log_every": log_every, "histograms": bool(histograms), "graph": bool(graph),
            "on_nan": on_nan, "name": name.strip("/") if name else None}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DataParallel / DistributedDataParallel / torch.compile."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model




class Watched:
    """One watched model in one run."""

    def __init__(self, capture: Any, model: torch.nn.Module, options: dict[str, Any], prefix: str) -> None:
        self.capture = capture
        inner = unwrap(model)
        self.ref = weakref.ref(inner)
        self.prefix = prefix
        self.graph_name = prefix.rstrip("/") or "model"
        self.counter = SampleCounter(model, inner)  # inputs in grad mode since the last step
        self.graph_pending = False
        self.graph_done = False
        self._graph_input: tuple[tuple, dict, int] | None = None
        self.configure(options)
        self._params: list[tuple[str, torch.nn.Parameter]] | None = None
        self._subsets: dict[int, tuple[Any, list[tuple[str, torch.nn.Parameter]]]] = {}
        self._plans: dict[int, tuple[Any, Any]] = {}  # optimizer index -> (its subset, `_plan` of it)
        self._layout: dict[str, tuple[tuple[int, int] | None, float | None]] = {}  # sharded: name -> (piece, share)
        self._names: dict[tuple, tuple[str, ...]] = {}
        self.last_stats: dict[int, int] = {}  # optimizer index -> run step of the last statistics
        self.total_optimizer: int | None = None  # whose total is "grad_norm/total"
        self._updates: dict[int, list[tuple[tuple[str, ...], list, list, torch.Tensor, int]]] = {}
        self._steps: dict[int, tuple[int, bool, bool]] = {}  # optimizer index -> (run step, statistics?, checked?) of its step
        self.post_needed = True  # `post_step` has work after the step `pre_step` saw
        self._module = weakref.ref(model)  # what the hook is registered on (maybe a wrapper)
        # DTensor parameters: every rank takes local partials, reduced at the hand-offs
        self.sharded = capture.sharded if sharded.is_sharded(inner) else None
        if self.sharded is not None:
            self.sharded.enabled = True
        self.handle = add_hook(model, "forward_pre", self.forward_pre_hook, with_kwargs=True)
        keep_hook_eager()

    def configure(self, options: dict[str, Any]) -> None:
        self.options = options
        self.log = options["log"]
        self.histograms = options["histograms"]
        self.every: int = options["log_every"] or self.capture.run.settings.log_every  # statistics period
        if options["graph"] and not self.graph_done:
            self.graph_pending = True

    def remove(self) -> None:
        remove_hook(self.handle)
        self.counter.remove_hooks()
        self.capture.guard.call("graph", self.flush_graph)
        self._params = None
        self._subsets.clear()
        self._plans.clear()
        self._updates.clear()

    # -- forward -------------------------------------------------------------------------------
    def forward_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """The model's forward pre-hook (held weakly by `autolog.capture.hooks.ModuleHook`).
        Traced by torch.compile, it calls its twin behind `torch.compiler.disable` instead,
        which runs eagerly (a graph break); eager forwards pay no wrapper."""
        if torch.compiler.is_compiling():
            return _EAGER_HOOK[0](self, module, args, kwargs) if _EAGER_HOOK else None
        return self.observe_forward(args, kwargs)

    def observe_forward(self, args: tuple, kwargs: dict) -> None:
        self.capture.guard.call("watch", self.on_forward, args, kwargs)

    def on_forward(self, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled():
            self.counter.on_forward(self._module(), args, kwargs)
        if self.graph_pending:
            # Tracing reads values back (torch.jit's checks): it is done at the next hand-off.
            self.graph_pending = False
            self.graph_done = True
            self._graph_input = (tuple(args), dict(kwargs), self.capture.run.step)

    def flush_graph(self) -> None:
        """Trace and record the graph from the input kept at the first forward (at a hand-off)."""
        pending, self._graph_input = self._graph_input, None
        model = self.ref()
        if pending is None or model is None:
            return
        args, kwargs, step = pending
        example: Any = args if args else kwargs
        try:
            from autolog.capture.graph import model_graph
        except ImportError:
            data = {"text": str(model)}
        else:
            data = model_graph(model, example)
        self.capture.run.media("graph", self.graph_name, data, step)

    # -- optimizer steps -----------------------------------------------------------------------
    def _subset(self, model: torch.nn.Module, opt: Any, ids: frozenset[int], refresh: bool
                ) -> list[tuple[str, torch.nn.Parameter]]:
        """The model's named parameters that optimizer `opt` updates (cached)."""
        if refresh or self._params is None:
            if self.sharded is not None:
                entries = sharded.named_parameters(model)
                self._params = [(n, p) for n, p, _piece, _share in entries]
                self._layout = {n: (piece, share) for n, _p, piece, share in entries}
            else:
                self._params = list(model.named_parameters())
            self._subsets.clear()
        cached = self._subsets.get(opt.index)
        if cached is None or cached[0] is not ids:
            cached = (ids, [(n, p) for n, p in self._params if id(p) in ids])
            self._subsets[opt.index] = cached
        return cached[1]

    def _named(self, kind: str, names: list[str]) -> tuple[str, ...]:
        key = (kind, tuple(names))
        named = self._names.get(key)
        if named is None:
            named = self._names[key] = tuple(f"{kind}{self.prefix}{n}" for n in names)
        return named

    def pre_step(self, opt: Any, ids: frozenset[int], step: int, closure: bool = False) -> bool:
        """Before a step of optimizer `opt` (an OptimizerState): the weights it will update
        (norms, histograms, a copy for the update ratio). False when the model is gone.

        Between statistics steps, a step without a closure has its gradients checked for NaN/Inf
        here, before the optimizer runs: they are the gradients it will use (optimizers never
        change ``.grad`` in place), and backward has just written them, so the fused norm reads
        them from the cache instead of after the optimizer's own pass over its state."""
        model = self.ref()
        if model is None:
            return False
        self.post_needed = True
        if not _EAGER_HOOK:
            keep_hook_eager()
        stats_step = step % self.every == 0 and self.last_stats.get(opt.index) != step
        if not stats_step:
            checked = False
            monitor = self.capture.monitor
            if monitor.active and not closure and self.sharded is None:
                groups = self._fast_norms(model, opt, ids, stack=False)
                if groups is not None:
                    for _names, norms, _tensors, checked_names in groups:
                        monitor.check_gradients(checked_names, norms, step)
                    checked = True
            self._steps[opt.index] = (step, False, checked)
            self.post_needed = not checked
            return True
        self._steps[opt.index] = (step, True, False)
        self.last_stats[opt.index] = step
        subset = self._subset(model, opt, ids, refresh=True)
        trainable = [(n, p.detach()) for n, p in subset if p.requires_grad]
        if self.log not in ("parameters", "all") or not trainable:
            return True
        if self.sharded is not None:
            self._sharded_pre(opt, trainable, step)
            return True
        buffer = self.capture.run.buffer
        wall = time.time()
        updates = []
        for _device, names, tensors in stats.by_device(trainable):
            norms = stats.norms(tensors)
            buffer.vector(self._named("weight_norm/", names), step, norms, wall)
            updates.append((self._named("update_ratio/", names), tensors, stats.snapshot(tensors), norms, step))
        self._updates[opt.index] = updates
        if self.histograms:
            for n, p in trainable:
                self._histogram(buffer, f"parameters/{self.prefix}{n}", step, p, wall)
        return True

    def post_step(self, opt: Any, ids: frozenset[int]) -> None:
        """After a step of `opt`: the gradients it used (norms, histograms, the NaN/Inf check;
        read after the step so that a closure's backward is included) and the update ratios."""
        step, stats_step, checked = self._steps.pop(opt.index, (None, False, False))
        model = self.ref()
        if step is None or model is None or checked:
            return
        if self.sharded is not None:
            self._sharded_post(opt, ids, step, stats_step, model)
            return
        buffer = self.capture.run.buffer
        wall = time.time()
        updates = self._updates.pop(opt.index, None)
        for names, tensors, before, before_norms, at in updates or ():
            buffer.vector(names, at, stats.update_ratios(before, before_norms, tensors), wall)
        monitor = self.capture.monitor
        want_grads = stats_step and self.log in ("gradients", "all")
        if not (want_grads or monitor.active):
            return
        groups = self._fast_norms(model, opt, ids, stack=want_grads)  # one fused norm of every gradient
        if groups is None:
            grads = [(n, p.grad) for n, p in self._subset(model, opt, ids, refresh=False)
                     if p.requires_grad and p.grad is not None and p.grad.layout == torch.strided]
            groups = [(tuple(names), stats.norms(tensors), tensors, self._named("", names))
                      for _d, names, tensors in stats.by_device(grads)]
        if not groups:
            return
        for names, norms, _tensors, checked_names in groups:
            if monitor.active:
                monitor.check_gradients(checked_names, norms, step)
            if want_grads:
                buffer.vector(self._named("grad_norm/", names), step, norms, wall)
        if not want_grads:
            return
        if self.total_optimizer is None:
            self.total_optimizer = opt.index
        total = stats.total_norm([norms for _n, norms, _t, _c in groups])
        if total is not None:
            suffix = "" if opt.index == self.total_optimizer else f"/{opt.label or opt.index}"
            buffer.scalar(f"grad_norm/{self.prefix}total{suffix}", step, total, wall)
        if self.histograms:
            for names, _norms, tensors, _c in groups:
                for n, g in zip(names, tensors):
                    self._histogram(buffer, f"gradients/{self.prefix}{n}", step, g, wall)

    def _fast_norms(self, model: torch.nn.Module, opt: Any, ids: frozenset[int], stack: bool
                    ) -> list[tuple[tuple[str, ...], Any, list[torch.Tensor], tuple[str, ...]]] | None:
        """The gradient norms of the parameters `opt` updates, as one group (names, norms,
        gradients, the names as the NaN/Inf monitor keeps them), when they all have a
        dense gradient on one device (the usual case): one list of ``.grad`` and one fused
        kernel per step, no per-parameter Python beyond that. None: take the general path."""
        entry = self._subsets.get(opt.index)  # (`_subset`'s cache entry, looked at without a call)
        plan = self._plans.get(opt.index)
        if entry is None or entry[0] is not ids or plan is None or plan[0] is not entry:
            subset = self._subset(model, opt, ids, refresh=False)
            planned = self._plan(subset)
            if planned is not None:  # and the names as the NaN/Inf monitor keeps them
                planned = (*planned, self._named("", list(planned[0])))
            plan = self._plans[opt.index] = (self._subsets[opt.index], planned)
        if plan[1] is None:
            return None
        names, params, dtype, checked_names = plan[1]
        grads = list(map(_GRAD, params))
        try:
            if grads[0].requires_grad:  # gradients with a graph (create_graph=True): none here
                with torch.no_grad():
                    norms = torch._foreach_norm(grads, 2, dtype=dtype)
            else:
                norms = torch._foreach_norm(grads, 2, dtype=dtype)
        except (TypeError, RuntimeError, AttributeError):  # a missing or odd gradient this step
            return None
        # One 1-D tensor per step, except for few parameters when only the NaN/Inf check needs
        # them: their 0-d norms are kept as they are and stacked all at once at the hand-off.
        return [(names, norms if len(norms) <= _STACK_LATER and not stack else torch.stack(norms), grads,
                 checked_names)]

    @staticmethod
    def _plan(subset: list[tuple[str, torch.nn.Parameter]]) -> tuple[tuple[str, ...], list, torch.dtype] | None:
        """(names, parameters, norm dtype) of the trainable parameters of `subset` when they and
        their gradients are dense and on one device; else None."""
        trainable = [(n, p) for n, p in subset if p.requires_grad]
        if not trainable:
            return None
        devices = {p.device for _n, p in trainable}
        grads = [p.grad for _n, p in trainable]
        if len(devices) != 1 or any(g is None or g.layout != torch.strided or g.device != trainable[0][1].device
                                    for g in grads) or any(p.layout != torch.strided for _n, p in trainable):
            return None
        return tuple(n for n, _p in trainable), [p for _n, p in trainable], stats.norm_dtype(grads)

    # -- sharded models (every rank; see autolog.capture.sharded) --------------------------------
    def _parts(self, items: list[tuple[str, torch.Tensor]]) -> tuple[list[str], list[torch.Tensor], list[float]]:
        """Names, this rank's local parts and their weights in the cross-rank sums."""
        rank, layout = self.sharded.rank, self._layout
        names, parts, weights = [], [], []
        for n, t in items:
            piece, share = layout.get(n, (None, None))
            names.append(n)
            parts.append(sharded.local(t, piece))
            weights.append(sharded.weight(t, rank, share))
        return names, parts, weights

    def _sharded_pre(self, opt: Any, trainable: list[tuple[str, torch.Tensor]], step: int) -> None:
        acc = self.sharded
        names, parts, weights = self._parts(trainable)
        sums = acc.sums(parts, weights)
        acc.add_norms(self._named("weight_norm/", names), step, sums)
        self._updates[opt.index] = [(self._named("update_ratio/", names), trainable, stats.snapshot(parts),
                                     (sums, weights), step)]
        if self.histograms:
            for n, part, w in zip(names, parts, weights):
                acc.add_histogram(f"parameters/{self.prefix}{n}", step, part, w)

    def _sharded_post(self, opt: Any, ids: frozenset[int], step: int, stats_step: bool, model: Any) -> None:
        acc = self.sharded
        for names, trainable, before, (sums, weights), at in self._updates.pop(opt.index, None) or ():
            acc.add_ratios(names, at, before, sums, self._parts(trainable)[1], weights)
        monitor = self.capture.monitor
        want_grads = stats_step and self.log in ("gradients", "all")
        if not (want_grads or monitor.active):
            return
        grads = []
        for n, p in self._subset(model, opt, ids, refresh=False):
            grad = p.grad
            if grad is None and self._layout.get(n, (None, None))[1] is not None and sharded.local(p).numel() == 0:
                grad = p.detach()  # FSDP1 (use_orig_params): no part of it here, no gradient
            if p.requires_grad and grad is not None and grad.layout == torch.strided:
                grads.append((n, grad))
        if not grads:
            return
        names, parts, weights = self._parts(grads)
        if monitor.active:  # this rank's parts; the alarm is reduced over ranks at the hand-off
            monitor.check_gradients(self._named("", names), stats.norms(parts), step)
        if not want_grads:
            return
        if self.total_optimizer is None:
            self.total_optimizer = opt.index
        suffix = "" if opt.index == self.total_optimizer else f"/{opt.label or opt.index}"
        acc.add_norms(self._named("grad_norm/", names), step, acc.sums(parts, weights),
                      f"grad_norm/{self.prefix}total{suffix}")
        if self.histograms:
            for n, part, w in zip(names, parts, weights):
                acc.add_histogram(f"gradients/{self.prefix}{n}", step, part, w)

    def backward_step(self, source: Any, ids: frozenset[int], step: int) -> None:
        """A run without optimizer, at the end of the backward that completes `step`: the
        statistics of both sides of a step, and the update ratios of the previous statistics
        step (the update the loop made since)."""
        held = self._updates.pop(source.index, None)
        if held:
            wall = time.time()
            for names, tensors, before, before_norms, at in held:
                if self.sharded is not None:
                    self.sharded.add_ratios(names, at, before, before_norms[0], self._parts(tensors)[1],
                                            before_norms[1])
                else:
                    self.capture.run.buffer.vector(names, at, stats.update_ratios(before, before_norms, tensors), wall)
        if not self.pre_step(source, ids, step):
            return
        held = self._updates.pop(source.index, None)
        self.post_step(source, ids)
        if held:
            self._updates[source.index] = held

    @staticmethod
    def _histogram(buffer: Any, name: str, step: int, tensor: torch.Tensor, wall: float) -> None:
        if tensor.numel() == 0 or tensor.is_complex():
            return
        counts, low, high = stats.histogram(tensor)
        buffer.histogram(name, step, counts, low, high, wall)
