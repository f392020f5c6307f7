"""The open-run stack of this process: `current()`, the run nested calls join, and
`capture()`, the automatic capture of that run. Imports nothing from autolog, so that both the
core (which pushes and pops runs) and the capture (which asks for the open one on every patched
call) can use it without importing each other."""
from __future__ import annotations

import threading
from typing import Any

# The stack of open runs (Run or NullRun); nested calls join the top one.
active: list[Any] = []
lock = threading.RLock()


def current() -> Any:
    """The innermost open run (a Run, or a NullRun while a disabled run is open), or None."""
    return active[-1] if active else None


def capture() -> Any:
    """The automatic capture of the innermost open run, or None (no run, a disabled run, capture
    off). Called on every patched call: one list look-up and one attribute read."""
    return active[-1].capture if active else None


def push(run: Any) -> None:
    with lock:
        active.append(run)


def remove(run: Any) -> bool:
    """Take `run` off the stack; False when it was not on it."""
    with lock:
        if run in active:
            active.remove(run)
            return True
        return False


def reset_after_fork() -> None:
    """In a forked child: a new lock, no open run (the child's runs are inert)."""
    global lock
    lock = threading.RLock()
    active.clear()
