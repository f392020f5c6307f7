"""What a run records about where and how it ran."""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
import traceback
from typing import Any

from autolog._version import __version__
from autolog.core.validate import clean_text, safe_str


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat()


def git_info(cwd: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree around `cwd`, or {} outside one."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True,  # noqa: E731
                                        timeout=timeout, check=True).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError, ValueError):  # ValueError: undecodable output
        return {}


def start_meta(start: float) -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {
        "start_time": iso(start),
        "start_timestamp": start,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "autolog": __version__,
        "platform": platform.platform(),
        "cwd": clean_text(_cwd()),
        "command": [clean_text(a) for a in (sys.executable, *sys.argv)],
    }
    meta.update(git_info(_cwd() or None))
    return meta


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the working directory was removed
        return ""


def exception_record(exc: BaseException) -> dict[str, str]:
    """Type, message and traceback of `exc` as clean text; never raises, whatever the
    exception's ``__str__`` (or its traceback's objects) do."""
    try:
        kind = clean_text(type(exc).__qualname__)
    except Exception:  # noqa: BLE001
        kind = "BaseException"
    message = clean_text(safe_str(exc))
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception as err:  # noqa: BLE001 -- e.g. a __str__ that fails in a chained exception
        tb = f"{kind}: {message}\n(traceback unavailable: {type(err).__name__})\n"
    return {"exception_type": kind, "exception_message": message, "traceback": clean_text(tb)}
