"""The one small base class every sink implements."""
from __future__ import annotations

import functools
import inspect
from typing import Any

from autolog.pipeline.records import Batch, RunInfo, RunResult


class Sink:
    """Receives a run's records on a thread of its own, never on the training thread.

    Subclasses override any of the three methods. `open` is called once before the first
    batch, `write` once per record batch (in log order), `close` once at the end with the final
    status. A method that raises is reported once and counted; the run, its log and the other
    sinks go on. Every sink follows the run's log (``events.alog``): when it is slow it catches
    up from the file, and one still behind when the run closes is finished by ``autolog sync``,
    which rebuilds it from its class and `options()` and opens it with ``run.resumed=True``
    (append to the earlier output). Third-party sinks register a subclass under the entry-point
    group ``autolog.sinks``.
    """

    #: short name used in messages and by `sinks=("name", ...)`
    name: str = "sink"
    #: False for sinks that only make sense live (the console): `autolog sync` skips them
    syncable: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self: Sink, *args: Any, **kw: Any) -> None:
            state = getattr(self, "__dict__", None)  # (None for a sink with __slots__)
            if state is not None and "_init_arguments" not in state:  # the outermost constructor's
                state["_init_arguments"] = (cls, args, kw)
            init(self, *args, **kw)

        cls.__init__ = __init__  # type: ignore[misc]

    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild an equivalent sink: those it was constructed with."""
        cls, args, kw = getattr(self, "__dict__", {}).get("_init_arguments", (None, (), {}))
        if cls is None or not args:
            return dict(kw)
        init = cls.__dict__["__init__"].__wrapped__
        bound = inspect.signature(init).bind(self, *args, **kw)
        out: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = inspect.signature(init).parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                out[name] = value
        return out

    def existing_output(self, run: RunInfo) -> str | None:
        """Why writing `run` here again would duplicate it (its output is already where this
        sink writes), or None. `autolog replay` refuses such a target unless ``--force``."""
        return None

    def open(self, run: RunInfo) -> None:
        """The run started: `run.config` is final unless a later batch carries `config`."""

    def write(self, batch: Batch) -> None:
        """Scalars, histograms, media and config updates, in the order the run's log has them."""

    def close(self, result: RunResult) -> None:
        """The run ended with `result.status`; flush and release everything."""

    def backend(self) -> Any:
        """The backend's own object for calls autolog does not wrap (`Run.backend`), or None.

        Called on the user's thread, after `open`; what it returns is used on that thread."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
