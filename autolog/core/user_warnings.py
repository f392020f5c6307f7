"""Warnings that point at the user's line: found anywhere in autolog (the writer thread
included), told on the training thread with a stacklevel that lands on the user's own frame."""
from __future__ import annotations

import os
import sys
import threading
import warnings

_skip: tuple[str, ...] = ()  # folders whose frames are not the user's: autolog, torch, wrapt


def _skipped() -> tuple[str, ...]:
    global _skip
    if not _skip:
        import torch
        import wrapt

        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # autolog's own folder
        _skip = (package + os.sep,) + tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                                            for m in (torch, wrapt))
    return _skip


deferred: list[tuple[str, type[Warning]]] = []  # found on autolog's threads, told on the user's


def warn_user(message: str, category: type[Warning]) -> None:
    """Warn with a stacklevel that lands on the user's line: the first frame outside autolog,
    torch and wrapt. On autolog's own threads (the writer, the sinks: no user frame there) the
    warning is kept and told on the training thread at autolog's next call there (a step, a
    backward, the end of the run)."""
    if threading.current_thread().name.startswith("autolog-"):
        deferred.append((message, category))
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
    while deferred:
        try:
            message, category = deferred.pop(0)
        except IndexError:
            return
        try:
            warn_user(message, category)
        except Exception:  # noqa: BLE001 -- warnings turned into errors (-W error) must not
            pass  # raise into the user's backward/step; the finding is in the run's meta anyway
