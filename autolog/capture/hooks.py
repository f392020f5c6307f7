"""Module hooks that leave the user's model as it was: every module hook autolog registers goes
through `add_hook` / `remove_hook`.

A hook is a `ModuleHook` (a small module-level class holding a weak reference to its callback),
and while one is registered on a module, the module's class has a reducer in
``copyreg.dispatch_table`` that pickles the module without autolog's hook entries. So
``torch.save(model)``, ``copy.deepcopy(model)`` and ``torch.multiprocessing`` (spawn) of a
watched model give exactly what they give for the same model unwatched: nothing of autolog is in
the pickle (it loads with ``torch.load(f)``, weights_only), and a copy has no autolog hooks.
The reducer is removed when the class's last hook goes; it passes any module of the class
without autolog hooks through unchanged, and chains to a reducer that was there before.
"""
from __future__ import annotations

import copyreg
import threading
import weakref
from typing import Any, Callable

import torch
from torch.utils.hooks import RemovableHandle

KINDS = ("forward_pre", "forward", "full_backward_pre", "full_backward")

_lock = threading.Lock()
_ours: dict[int, type] = {}  # RemovableHandle ids of autolog's hooks (unique process-wide) -> class
_classes: dict[type, int] = {}  # class -> autolog hooks on its instances
_previous: dict[type, Any] = {}  # class -> the dispatch-table entry found before ours (or None)


class ModuleHook:
    """A module hook calling `callback`: a bound method's object is held weakly (the hook never
    keeps its owner alive; once the owner is gone the hook does nothing). Not meant to be pickled: a pickled one,
    should a path bypass the reducer, comes back as a hook that does nothing."""

    __slots__ = ("_owner", "_func", "__weakref__")

    def __init__(self, callback: Callable[..., Any]) -> None:
        owner = getattr(callback, "__self__", None)
        # a bound method: its object weakly, its function; else the (module-level) function
        self._owner: weakref.ref | None = weakref.ref(owner) if owner is not None else None
        self._func: Callable[..., Any] = getattr(callback, "__func__", callback)

    def __call__(self, *args: Any) -> Any:  # torch passes hook arguments positionally
        if self._owner is None:
            return self._func(*args)
        owner = self._owner()
        return None if owner is None else self._func(owner, *args)

    def __reduce__(self) -> Any:
        return _dead_hook, ()

    def __deepcopy__(self, memo: dict) -> "ModuleHook":
        return _dead_hook()


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _dead_hook() -> ModuleHook:
    return ModuleHook(_nothing)


def add_hook(module: torch.nn.Module, kind: str, callback: Callable[..., Any], **options: Any) -> RemovableHandle:
    """Register `callback` as a `kind` hook of `module` (``register_<kind>_hook(**options)``).
    Returns torch's handle; undo with `remove_hook`."""
    if kind not in KINDS:
        raise ValueError(f"add_hook: kind: expected one of {KINDS}, got {kind!r}")
    hook = ModuleHook(callback)
    handle = getattr(module, f"register_{kind}_hook")(hook, **options)
    cls = type(module)
    with _lock:
        _ours[handle.id] = cls
        _classes[cls] = _classes.get(cls, 0) + 1
        if _classes[cls] == 1:
            current = copyreg.dispatch_table.get(cls)
            if current is not _reduce_without_hooks:
                _previous[cls] = current
            copyreg.dispatch_table[cls] = _reduce_without_hooks
    return handle


def remove_hook(handle: RemovableHandle) -> None:
    """Remove a hook `add_hook` registered (a second call does nothing)."""
    handle.remove()
    with _lock:
        cls = _ours.pop(handle.id, None)
        if cls is None or cls not in _classes:
            return
        _classes[cls] -= 1
        if _classes[cls] == 0:
            del _classes[cls]
            previous = _previous.pop(cls, None)
            if copyreg.dispatch_table.get(cls) is _reduce_without_hooks:
                if previous is None:
                    del copyreg.dispatch_table[cls]
                else:
                    copyreg.dispatch_table[cls] = previous


def has_autolog_hooks(module: torch.nn.Module) -> bool:
    """Whether any of autolog's hooks is registered on `module` itself."""
    return any(not _ours.keys().isdisjoint(d) for d in _hook_dicts(vars(module)).values())


def _hook_dicts(state: dict[str, Any]) -> dict[str, dict]:
    return {k: v for k, v in state.items() if "hook" in k and isinstance(v, dict)}


def _reduce_without_hooks(module: Any) -> Any:
    """The module's own reduction (its ``__reduce_ex__``, or the reducer found before ours), with
    autolog's entries left out of its hook dicts."""
    previous = _previous.get(type(module))
    rv = previous(module) if previous is not None else module.__reduce_ex__(2)
    if not isinstance(rv, tuple) or len(rv) < 3 or not isinstance(rv[2], dict) or not _ours:
        return rv
    state = rv[2]
    hooks = {k: d for k, d in _hook_dicts(state).items() if not _ours.keys().isdisjoint(d)}
    if not hooks:
        return rv
    state = dict(state)  # never the module's own __dict__
    for key, hook_dict in hooks.items():
        state[key] = type(hook_dict)((k, v) for k, v in hook_dict.items() if k not in _ours)
    return (*rv[:2], state, *rv[3:])
