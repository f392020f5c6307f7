"""What a run records about where and how it ran."""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from typing import Any

from autolog._version import __version__


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
    except (OSError, subprocess.SubprocessError):
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
        "cwd": os.getcwd(),
        "command": [sys.executable, *sys.argv],
    }
    meta.update(git_info(os.getcwd()))
    return meta
