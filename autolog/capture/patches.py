"""Process-wide patches: ``torch.autograd.backward`` (which ``Tensor.backward`` calls),
``GradScaler.scale`` and ``GradScaler.step``, ``Optimizer.__init__`` (to know that a run has an
optimizer), ``DataLoader.__iter__`` (a new pass over a loader: epochs), the clipping that
``torch.nn.utils.clip_grad_norm_`` does with its total norm (and ``clip_grads_with_norm_``, the
public name that callers of ``get_total_norm`` use; FSDP's ``clip_grad_norm_`` once FSDP is
imported), all with wrapt, and torch's global optimizer step pre/post hooks.

They are installed while at least one run captures (`acquire`/`release` count the runs) and
removed exactly when the last one ends. Every wrapper first looks for an open capturing run and
calls straight through when there is none, so code outside a run is never affected; a wrapper
left behind because someone wrapped on top of it is such a pass-through too. The wrapped call
itself never runs inside a guard: the host's exceptions propagate unchanged.
"""
from __future__ import annotations

import contextvars
import sys
import threading
import weakref
from typing import Any, Callable

import torch
import wrapt

from autolog import _state
from autolog.capture.errors import NonFiniteError

# Set while a patched backward runs: `Tensor.backward` calls `torch.autograd.backward`, and a
# backward called from inside a backward (a custom Function) is not a training loss.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("autolog_inside_backward", default=False)

# GradScaler.scale(loss) -> scaled: id(scaled) -> (weakref to scaled, the unscaled loss, detached)
_scaled: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


session = _state.capture  # the capture of the open run, or None (no run, disabled, capture off)


# -- wrappers ------------------------------------------------------------------------------------
def _loss_of(args: tuple, kwargs: dict) -> Any:
    """The loss of ``torch.autograd.backward(tensors, grad_tensors=None, ...)``: its one tensor
    (a tensor or a one-item sequence) when no gradient other than None was given, else None."""
    tensors = args[0] if args else kwargs.get("tensors")
    if not isinstance(tensors, torch.Tensor):
        if not (isinstance(tensors, (list, tuple)) and len(tensors) == 1 and isinstance(tensors[0], torch.Tensor)):
            return None
        tensors = tensors[0]
    grads = args[1] if len(args) > 1 else kwargs.get("grad_tensors", kwargs.get("grad_variables"))
    if grads is not None and not (isinstance(grads, (list, tuple)) and all(g is None for g in grads)):
        return None
    return tensors


def _autograd_backward(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
    # One frame of autolog in the traceback of an exception raised in a backward (the README's
    # "Fidelity"): the call through and the observation are inlined here, not in helpers.
    capture = session()
    if capture is None or _inside.get():
        return wrapped(*args, **kwargs)
    token = _inside.set(True)  # a backward called from inside this one is not a training loss
    try:
        result = wrapped(*args, **kwargs)
    finally:
        _inside.reset(token)
    if capture.backward_on:
        try:
            PATCHES.keep_up()
            # Tensor.backward's call, (loss, None, None, False, inputs=...), read without a call
            tensor = args[0] if len(args) == 4 and args[1] is None and type(args[0]) is torch.Tensor \
                else _loss_of(args, kwargs)
            if tensor is not None:
                capture.on_backward(unscaled(tensor) if _scaled else tensor)
        except NonFiniteError:  # a run without optimizer: its hand-off, at this backward
            raise
        except Exception as exc:  # noqa: BLE001 -- instrumentation must never break training
            capture.guard.fail("loss", exc)
    return result


def _scaler_scale(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
    out = wrapped(*args, **kwargs)
    if session() is not None:
        try:
            outputs = args[0] if args else kwargs.get("outputs")
            if isinstance(out, torch.Tensor) and isinstance(outputs, torch.Tensor) and out is not outputs \
                    and outputs.numel() == 1:
                key = id(out)
                _scaled[key] = (weakref.ref(out, lambda _ref, key=key: _scaled.pop(key, None)),
                                outputs.detach())
        except Exception:  # noqa: BLE001 -- the scaled loss is returned whatever happens here
            pass
    return out


def unscaled(tensor: torch.Tensor) -> torch.Tensor:
    """The loss `tensor` was scaled from by GradScaler.scale, else `tensor`."""
    if not _scaled:
        return tensor
    entry = _scaled.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    return tensor


def _scaler_step(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
    capture = session()
    if capture is None:
        return wrapped(*args, **kwargs)
    before = capture.post_steps
    out = wrapped(*args, **kwargs)
    if capture.post_steps == before:  # GradScaler skipped the step: inf/NaN gradients
        optimizer = args[0] if args else kwargs.get("optimizer")
        capture.guard.call("loss", capture.on_skipped_step, optimizer)
    return out


def _then(feature: str, observe: Callable[[Any, Any, tuple, dict], None]) -> Callable:
    """A wrapper that calls through, then (in a capturing run) `observe(capture, result, args,
    kwargs)`; the observation never raises into the caller (it runs in the guard of `feature`)."""
    def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
        out = wrapped(*args, **kwargs)
        capture = session()
        if capture is not None:
            capture.guard.call(feature, observe, capture, out, args, kwargs)
        return out

    return wrapper


def _loader_iter(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
    """``DataLoader.__iter__``: a new pass over the loader (`autolog.capture.epochs`)."""
    out = wrapped(*args, **kwargs)
    capture = session()
    if capture is not None:
        capture.guard.call("epochs", capture.loaders.on_iter, instance)
    return out


def _seen_optimizer(capture: Any, out: Any, args: tuple, kwargs: dict) -> None:
    """After ``Optimizer.__init__``: this run has an optimizer; its steps are the run's steps."""
    capture.stepless = False


def _clipped(capture: Any, out: Any, args: tuple, kwargs: dict) -> None:
    """After ``clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)``, which
    ``clip_grad_norm_`` calls (looked up at call time) with the norm it returns."""
    capture.on_clip(args[2] if len(args) > 2 else kwargs.get("total_norm"))


def _returned_norm(capture: Any, out: Any, args: tuple, kwargs: dict) -> None:
    """After a ``clip_grad_norm_`` that returns the total norm (FSDP1's; torch's own where it
    does not call ``_clip_grads_with_norm_``)."""
    capture.on_clip(out)


_optimizer_init = _then("steps", _seen_optimizer)
_clip_with_norm = _then("grad_norm", _clipped)
_clip_returned = _then("grad_norm", _returned_norm)


def _pre_step(optimizer: Any, args: tuple, kwargs: dict) -> Any:
    if torch.compiler.is_compiling():  # inside a compiled optimizer.step: run eagerly, if we can
        return _EAGER[0](optimizer, args, kwargs) if _EAGER else None
    capture = session()
    if capture is not None:
        return capture.on_pre_step(optimizer, args, kwargs)  # new (args, kwargs) with a closure
    return None


def _post_step(optimizer: Any, args: tuple, kwargs: dict) -> None:
    if torch.compiler.is_compiling():
        if _EAGER:
            _EAGER[1](optimizer, args, kwargs)
        return
    capture = session()
    if capture is not None:
        capture.on_post_step(optimizer)  # may raise NonFiniteError at a hand-off (on_nan="raise")


# The hooks behind `torch.compiler.disable`, made once torch.compile is in use (importing it is
# costly: we never do). Dynamo, tracing a compiled ``optimizer.step``, meets a disabled function
# and calls it eagerly at the graph break torch already makes there; eager steps never pay for it.
_EAGER: list[Callable[..., Any]] = []


# -- installing ----------------------------------------------------------------------------------
def _wrap(owner: Any, name: str, wrapper: Callable) -> Callable[[], None]:
    """Wrap `owner.name`; returns the exact undo."""
    original = vars(owner)[name]
    wrapt.wrap_function_wrapper(owner, name, wrapper)
    installed = vars(owner)[name]

    def undo() -> None:
        if vars(owner).get(name) is installed:
            setattr(owner, name, original)
        # else something wrapped on top of ours: ours stays, as a pass-through outside runs

    return undo


class Patches:
    """The patches as one unit: `instrument` and `uninstrument` are idempotent."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._hooks: list[Any] = []  # the optimizer hooks' handles
        self._fsdp = False
        self._modules = 0  # len(sys.modules) at the last `keep_up`

    @property
    def installed(self) -> bool:
        return bool(self._undo)

    def instrument(self) -> bool:
        """Install everything; False (and nothing done) when already installed."""
        if self._undo:
            return False
        from torch.amp.grad_scaler import GradScaler

        # `Tensor.backward` calls `torch.autograd.backward` (looked up at call time), so one
        # wrapper sees both spellings, and a backward costs one wrapper, not two.
        from torch.nn.utils import clip_grad

        self._undo = [_wrap(torch.autograd, "backward", _autograd_backward),
                      _wrap(GradScaler, "scale", _scaler_scale),
                      _wrap(GradScaler, "step", _scaler_step),
                      _wrap(torch.optim.Optimizer, "__init__", _optimizer_init),
                      _wrap(torch.utils.data.DataLoader, "__iter__", _loader_iter)]
        if "_clip_grads_with_norm_" in vars(clip_grad):
            import torch.nn.utils as nn_utils

            self._undo.append(_wrap(clip_grad, "_clip_grads_with_norm_", _clip_with_norm))
            # its public name, bound at torch's import: what callers of the split API
            # (``get_total_norm`` then ``clip_grads_with_norm_``, as accelerate does) reach
            for owner in {id(m): m for m in (clip_grad, nn_utils)}.values():
                if "clip_grads_with_norm_" in vars(owner):
                    self._undo.append(_wrap(owner, "clip_grads_with_norm_", _clip_with_norm))
        else:  # a torch whose clip_grad_norm_ clips by itself: its public names (seen when called so)
            import torch.nn.utils as nn_utils

            for owner in {id(m): m for m in (clip_grad, nn_utils)}.values():
                if "clip_grad_norm_" in vars(owner):
                    self._undo.append(_wrap(owner, "clip_grad_norm_", _clip_returned))
        self._fsdp = False
        self._modules = 0
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._hooks = [register_optimizer_step_pre_hook(_pre_step), register_optimizer_step_post_hook(_post_step)]
        self.keep_up()
        return True

    def keep_up(self) -> None:
        """At each backward (cheap when there is nothing to do): once torch.compile is in use,
        the eager twins of the optimizer hooks; once FSDP is imported, its ``clip_grad_norm_``
        wrapped (importing either is costly: we never do). Nothing to look at while no module
        was imported since the last look."""
        modules = len(sys.modules)
        if modules == self._modules:
            return
        self._modules = modules
        if not _EAGER and "torch._dynamo" in sys.modules:
            _EAGER[:] = [torch.compiler.disable(_pre_step), torch.compiler.disable(_post_step)]
        if not self._fsdp and self._undo:
            fsdp = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
            cls = getattr(fsdp, "FullyShardedDataParallel", None)
            if cls is not None and "clip_grad_norm_" in vars(cls):
                self._fsdp = True
                self._undo.append(_wrap(cls, "clip_grad_norm_", _clip_returned))

    def uninstrument(self) -> bool:
        """Remove everything; False when nothing was installed."""
        if not self._undo:
            return False
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        undo, self._undo = self._undo, []
        for fn in reversed(undo):
            fn()
        _scaled.clear()
        self._fsdp = False
        return True


PATCHES = Patches()
_lock = threading.Lock()
_users = 0


def acquire() -> None:
    """One more capturing run: install the patches if it is the first."""
    global _users
    with _lock:
        _users += 1
        if _users == 1:
            PATCHES.instrument()


def release() -> None:
    """One capturing run fewer: remove the patches when it was the last."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            PATCHES.uninstrument()


def users() -> int:
    return _users
