"""Never break the host: capture code runs through `Guard.call`, which catches, reports once,
and turns the failed feature off for the rest of the run. The host's own exceptions (from the
wrapped call) always propagate, because the wrapped call never runs inside a guard."""
from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any, Callable

from autolog.core.redact import scrub
from autolog.core.validate import clean_text, safe_str


class Guard:
    """Per-run kill switches, one per feature name."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.off: set[str] = set()
        self.meta = meta  # the run's meta: failures are recorded under "capture_errors"

    def on(self, feature: str) -> bool:
        return feature not in self.off

    def call(self, feature: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, or None when the feature is off or `fn` raises (which turns it off)."""
        if _deferred:
            flush_warnings()
        if feature in self.off:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 -- instrumentation must never break training
            self.fail(feature, exc)
            return None

    def fail(self, feature: str, exc: BaseException) -> None:
        if feature in self.off:
            return
        self.off.add(feature)
        detail = scrub(clean_text(f"{type(exc).__name__}: {safe_str(exc)}"))
        if self.meta is not None:
            self.meta.setdefault("capture_errors", {})[feature] = detail
        print(f"autolog: automatic capture of {feature} failed and is off for this run; "
              f"training goes on. {detail}", file=sys.stderr)


# -- warnings that point at the user's line -------------------------------------------------------
_skip: tuple[str, ...] = ()  # folders whose frames are not the user's: autolog, torch, wrapt


def _skipped() -> tuple[str, ...]:
    global _skip
    if not _skip:
        import torch
        import wrapt

        import autolog

        _skip = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (autolog, torch, wrapt))
    return _skip


_deferred: list[tuple[str, type[Warning]]] = []  # found on autolog's threads, told on the user's


def warn_user(message: str, category: type[Warning]) -> None:
    """Warn with a stacklevel that lands on the user's line: the first frame outside autolog,
    torch and wrapt. On autolog's own threads (the writer, the sinks: no user frame there) the
    warning is kept and told on the training thread at autolog's next call there (a step, a
    backward, the end of the run)."""
    if threading.current_thread().name.startswith("autolog-"):
        _deferred.append((message, category))
        return
    skip = _skipped()
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def flush_warnings() -> None:
    """Tell the warnings found on autolog's threads (called on the training thread)."""
    if threading.current_thread().name.startswith("autolog-"):
        return
    while _deferred:
        try:
            message, category = _deferred.pop(0)
        except IndexError:
            return
        try:
            warn_user(message, category)
        except Exception:  # noqa: BLE001 -- warnings turned into errors (-W error) must not
            pass  # raise into the user's backward/step; the finding is in the run's meta anyway
