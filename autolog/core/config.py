"""Config capture: a train function's arguments (and anything passed as `config=`) flattened into
one dict of JSON-friendly values with "." keys. Big objects are described, never copied.

Capture never raises into the user's call and never changes the arguments: an object whose own
methods fail (``__repr__``, ``__len__``, ``__getattr__``...) is recorded as
``<unrepresentable: RuntimeError in __repr__>``, cycles as ``<recursive>``, and the limits below
bound the work and the size of the record."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import itertools
import math
import os
import reprlib
from typing import Any, Callable, Mapping

from autolog.core.validate import clean_text, safe_str

# Limits of what a config records (see the README, "Config"): nesting deeper than MAX_DEPTH is
# described as one value; a list or tuple keeps its first MAX_ITEMS items; strings (keys and
# values) are cut to MAX_STR characters (+ "..."); past MAX_KEYS keys the rest of the config is
# left out and TRUNCATED_KEY says so; an int of more than MAX_INT_BITS bits (about 300 digits)
# is described by its number of digits.
MAX_DEPTH = 6
MAX_ITEMS = 64
MAX_STR = 500
MAX_KEYS = 1000
MAX_INT_BITS = 996
TRUNCATED_KEY = "..."


class _Unrepresentable(Exception):
    """An object's own method raised while it was being described."""

    def __init__(self, method: str, exc: BaseException) -> None:
        super().__init__(method)
        self.text = f"<unrepresentable: {type(exc).__name__} in {method}>"


def _call(method: str, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`; an exception becomes `_Unrepresentable` naming `method`."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 -- the user's object, not ours, failed
        raise _Unrepresentable(method, exc) from None


def bound_arguments(func: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call by parameter name, defaults included; `self`/`cls` left out.

    ``*args`` appear under their parameter name as a list, ``**kwargs`` merged in by name.
    """
    try:
        sig = inspect.signature(func)
        bound = sig.bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif name in ("self", "cls") and not out:
            continue
        else:
            out[name] = list(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
    return out


def describe(value: Any) -> str:
    """A short description of an object whose contents must not be recorded; never raises
    (``<unrepresentable: E in __repr__>`` when the object's own methods fail)."""
    try:
        return clean_text(_describe(value))
    except _Unrepresentable as err:
        return err.text
    except Exception as exc:  # noqa: BLE001 -- whatever else, a description and not an error
        return f"<unrepresentable: {type(exc).__name__}>"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 117, 117


def _describe(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={list(value.shape)}, dtype={str(value.dtype).replace('torch.', '')}, device={value.device})"
    if isinstance(value, torch.nn.Module):
        n = _call("parameters", lambda: sum(p.numel() for p in value.parameters()))
        return f"{type(value).__name__}(params={n})"
    if isinstance(value, torch.utils.data.DataLoader):
        try:
            size = len(value.dataset)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- an iterable dataset, or a broken __len__
            size = "?"
        return f"DataLoader(batch_size={value.batch_size}, dataset={type(value.dataset).__name__}, len={size})"
    if isinstance(value, torch.utils.data.Dataset):
        try:
            return f"{type(value).__name__}(len={len(value)})"  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001
            return type(value).__name__
    if isinstance(value, torch.optim.Optimizer):
        return f"{type(value).__name__}(groups={len(value.param_groups)})"
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if inspect.isclass(value) or callable(value):
        mod = _call("__getattr__", getattr, value, "__module__", None)
        qual = _call("__getattr__", getattr, value, "__qualname__", None) or type(value).__qualname__
        return f"{mod}.{qual}" if isinstance(mod, str) and mod != "builtins" else str(qual)
    shape = _call("__getattr__", getattr, value, "shape", None)
    if shape is not None and _call("__getattr__", hasattr, value, "dtype"):  # numpy and friends
        return f"{type(value).__name__}(shape={list(shape)}, dtype={value.dtype})"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        text = _call("__repr__", _REPR.repr, value)  # bounded, whatever the nesting
    else:
        text = _call("__repr__", repr, value)
        if not isinstance(text, str):
            raise _Unrepresentable("__repr__", TypeError())
    return text if len(text) <= 120 else text[:117] + "..."


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    """A mapping view of config-like containers, or None."""
    if isinstance(value, Mapping):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, argparse.Namespace):
        return vars(value)
    module = type(value).__module__ or ""
    if module.startswith("omegaconf"):
        from omegaconf import OmegaConf  # only reached when the user already has omegaconf

        container = OmegaConf.to_container(value, resolve=True)
        return container if isinstance(container, Mapping) else None
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):  # pydantic v2
        return {k: getattr(value, k) for k in type(value).model_fields}
    if hasattr(value, "dict") and hasattr(type(value), "__fields__"):  # pydantic v1
        return {k: getattr(value, k) for k in type(value).__fields__}
    return None


def _text(value: str) -> str:
    value = clean_text(value)
    return value if len(value) <= MAX_STR else value[:MAX_STR] + "..."


def _scalar(value: Any) -> Any:
    """A JSON-friendly version of a leaf value."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            return f"<int of {int(value.bit_length() * 0.30103) + 1} digits>"  # json cannot print it
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _text(_call("__getattr__", lambda: str(value.name)))
    if isinstance(value, os.PathLike):
        return _text(_call("__fspath__", os.fsdecode, value))
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _scalar(value.item())
    return describe(value)


class _Flattener:
    """One flattening pass: bounded in depth and keys, safe against cycles and raising objects."""

    def __init__(self, out: dict[str, Any]) -> None:
        self.out = out

    def put(self, key: str, value: Any) -> bool:
        """Store one entry; False once the config is full (MAX_KEYS)."""
        if key not in self.out and len(self.out) >= MAX_KEYS:
            self.out[TRUNCATED_KEY] = f"more than {MAX_KEYS} config keys: the rest is left out"
            return False
        self.out[key] = value
        return True

    def add(self, value: Any, prefix: str, depth: int, path: tuple[int, ...]) -> bool:
        key = prefix or "value"
        if TRUNCATED_KEY in self.out and len(self.out) > MAX_KEYS:
            return False
        if id(value) in path:
            return self.put(key, "<recursive>")
        try:
            return self._add(value, prefix, depth, path)
        except _Unrepresentable as err:
            return self.put(key, err.text)
        except RecursionError:
            return self.put(key, "<unrepresentable: RecursionError>")

    def _add(self, value: Any, prefix: str, depth: int, path: tuple[int, ...]) -> bool:
        mapping = _call("__getattr__", _as_mapping, value) if depth < MAX_DEPTH else None
        if mapping is not None:
            if _call("__len__", len, mapping) == 0 and prefix:
                return self.put(prefix, {})
            inner = (*path, id(value))
            for key, item in _call("items", lambda: list(itertools.islice(mapping.items(), MAX_KEYS + 1))):
                name = _text(safe_str(key))
                if not self.add(item, f"{prefix}.{name}" if prefix else name, depth + 1, inner):
                    return False
            return True
        if isinstance(value, (list, tuple)) and prefix:
            items = _call("__iter__", lambda: list(itertools.islice(value, MAX_ITEMS)))
            if all(_is_leaf(v) for v in items):
                return self.put(prefix, [self.leaf(v) for v in items])
            inner = (*path, id(value))
            for i, item in enumerate(items):
                if not self.add(item, f"{prefix}.{i}", depth + 1, inner):
                    return False
            return True
        return self.put(prefix or "value", self.leaf(value))

    @staticmethod
    def leaf(value: Any) -> Any:
        try:
            return _scalar(value)
        except _Unrepresentable as err:
            return err.text
        except Exception as exc:  # noqa: BLE001
            return f"<unrepresentable: {type(exc).__name__}>"


def _is_leaf(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return False
    try:
        return _as_mapping(value) is None
    except Exception:  # noqa: BLE001 -- described as a leaf
        return True


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """Config-like `value` flattened into `out` with "." keys; never raises (see the limits above)."""
    out = {} if out is None else out
    _Flattener(out).add(value, prefix, depth, ())
    return out


def capture(func: Callable | None, args: tuple, kwargs: dict, extra: Any = None) -> dict[str, Any]:
    """The flattened config of a tracked call: its arguments, then `extra` (``config=``) merged."""
    out: dict[str, Any] = {}
    if func is not None:
        try:
            arguments = bound_arguments(func, args, kwargs)
        except Exception:  # noqa: BLE001 -- an odd signature: no arguments recorded, the call runs
            arguments = {}
        flattener = _Flattener(out)
        for name, value in arguments.items():
            if not flattener.add(value, _text(name), 0, ()):
                break
    if extra is not None:
        flatten(extra, "", out)
    return out
