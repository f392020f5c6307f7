"""Sinks: where a run's records go.

Built-in names map to classes imported lazily, so that ``import autolog`` never imports
tensorboard or wandb. Third-party sinks register under the entry-point group ``autolog.sinks``::

    [project.entry-points."autolog.sinks"]
    mysink = "mypackage.sinks:MySink"
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from typing import Any, Iterable

from autolog.sinks.base import Sink

ENTRY_POINT_GROUP = "autolog.sinks"

# name -> (module, class, extra that installs its backend or None)
BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "local": ("autolog.sinks.local", "LocalSink", None),
    "tensorboard": ("autolog.sinks.tensorboard", "TensorBoardSink", "tensorboard"),
    "wandb": ("autolog.sinks.wandb", "WandbSink", "wandb"),
    "csv": ("autolog.sinks.csv", "CSVSink", None),
    "console": ("autolog.sinks.console", "ConsoleSink", None),
}

__all__ = ["Sink", "available_sinks", "resolve_sink", "resolve_sinks", "ENTRY_POINT_GROUP",
           "unknown_sink_message",
           "LocalSink", "TensorBoardSink", "WandbSink", "CSVSink", "ConsoleSink"]


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_sinks() -> list[str]:
    """Every name `sinks=` accepts: the built-ins, then registered plug-ins."""
    names = list(BUILTIN)
    names += sorted(n for n in _entry_points() if n not in BUILTIN)
    return names


def sink_class(name: str) -> type[Sink]:
    """The class registered under `name` (ValueError for an unknown name)."""
    if name in BUILTIN:
        module, cls, extra = BUILTIN[name]
        # Checked up front: a sink module may import its backend only when the sink opens.
        if extra is not None and not _importable(extra):
            raise _missing_extra(name, extra)
        try:
            return getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            if extra is None or exc.name in (None, module):
                raise
            raise _missing_extra(name, extra) from exc
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise TypeError(f"entry point {name!r} in {ENTRY_POINT_GROUP!r} must name a "
                            f"subclass of autolog.sinks.Sink, got {cls!r}")
        return cls
    raise ValueError(unknown_sink_message(name))


def unknown_sink_message(name: str) -> str:
    """``unknown sink 'x'; did you mean ...? (available sinks: ...)``, as ``autolog plot`` says
    it for metric names."""
    import difflib

    names = available_sinks()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown sink {name!r}{hint} (available sinks: {', '.join(names)})"


def _importable(package: str) -> bool:
    """Whether `package` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return package in sys.modules and sys.modules[package] is not None


def _missing_extra(name: str, extra: str) -> ImportError:
    return ImportError(
        f"the {name!r} sink needs the {extra!r} package: pip install 'autolog[{extra}]'",
        name=extra)


def resolve_sink(spec: Any) -> Sink:
    """A sink instance from a name, a `Sink` subclass or an instance."""
    if isinstance(spec, Sink):
        return spec
    if isinstance(spec, type) and issubclass(spec, Sink):
        return spec()
    if isinstance(spec, str):
        return sink_class(spec.strip())()
    raise TypeError(f"sinks: expected sink names, Sink subclasses or Sink instances, got {spec!r}")


def resolve_sinks(specs: Iterable[Any]) -> list[Sink]:
    """Instances for every entry of `sinks=`, in order."""
    return [resolve_sink(s) for s in specs]


def __getattr__(name: str) -> Any:  # lazy `from autolog.sinks import TensorBoardSink`
    for key, (module, cls, _extra) in BUILTIN.items():
        if cls == name:
            return sink_class(key)
    raise AttributeError(f"module 'autolog.sinks' has no attribute {name!r}")
