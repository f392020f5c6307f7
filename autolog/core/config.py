"""Config capture: a train function's arguments (and anything passed as `config=`) flattened into
one dict of JSON-friendly values with "." keys. Big objects are described, never copied."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import math
import os
from typing import Any, Callable, Mapping

MAX_DEPTH = 6
MAX_LIST = 64
MAX_STR = 500


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
    """A short description of an object whose contents must not be recorded."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={list(value.shape)}, dtype={str(value.dtype).replace('torch.', '')}, device={value.device})"
    if isinstance(value, torch.nn.Module):
        n = sum(p.numel() for p in value.parameters())
        return f"{type(value).__name__}(params={n})"
    if isinstance(value, torch.utils.data.DataLoader):
        try:
            size = len(value.dataset)  # type: ignore[arg-type]
        except TypeError:
            size = "?"
        return f"DataLoader(batch_size={value.batch_size}, dataset={type(value.dataset).__name__}, len={size})"
    if isinstance(value, torch.utils.data.Dataset):
        try:
            return f"{type(value).__name__}(len={len(value)})"  # type: ignore[arg-type]
        except TypeError:
            return type(value).__name__
    if isinstance(value, torch.optim.Optimizer):
        return f"{type(value).__name__}(groups={len(value.param_groups)})"
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if inspect.isclass(value) or callable(value):
        mod = getattr(value, "__module__", None)
        qual = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{mod}.{qual}" if mod and mod != "builtins" else qual
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # numpy and friends
        return f"{type(value).__name__}(shape={list(shape)}, dtype={value.dtype})"
    text = repr(value)
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


def _scalar(value: Any) -> Any:
    """A JSON-friendly version of a leaf value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value if not isinstance(value, str) or len(value) <= MAX_STR else value[:MAX_STR] + "..."
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _scalar(value.item())
    return describe(value)


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """Config-like `value` flattened into `out` with "." keys."""
    out = {} if out is None else out
    mapping = _as_mapping(value) if depth < MAX_DEPTH else None
    if mapping is not None:
        if not mapping and prefix:
            out[prefix] = {}
        for key, item in mapping.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out, depth + 1)
        return out
    if isinstance(value, (list, tuple)) and prefix:
        items = list(value)[:MAX_LIST]
        if all(_as_mapping(v) is None and not isinstance(v, (list, tuple)) for v in items):
            out[prefix] = [_scalar(v) for v in items]
        else:
            for i, item in enumerate(items):
                flatten(item, f"{prefix}.{i}", out, depth + 1)
        return out
    out[prefix or "value"] = _scalar(value)
    return out


def capture(func: Callable | None, args: tuple, kwargs: dict, extra: Any = None) -> dict[str, Any]:
    """The flattened config of a tracked call: its arguments, then `extra` (``config=``) merged."""
    out: dict[str, Any] = {}
    if func is not None:
        for name, value in bound_arguments(func, args, kwargs).items():
            flatten(value, name, out)
    if extra is not None:
        flatten(extra, "", out)
    return out
