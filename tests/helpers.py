"""Shared test helpers: running a Python snippet in a child process."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def child(code: str, cwd: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start `code` in a fresh interpreter with autolog importable, stdout/stdin piped."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def wait_line(proc: subprocess.Popen, expected: str) -> None:
    """Block until the child prints `expected` on a line of its own (its own synchronisation)."""
    for line in proc.stdout:
        if line.strip() == expected:
            return
    raise AssertionError(f"child ended before printing {expected!r}: {proc.stderr.read()}")


def read_csv(path, **kwargs):
    """``pandas.read_csv`` that gives back the exact floats autolog wrote, on every pandas: before
    3.0 pandas parses floats with a faster routine that can differ in the last digit unless
    ``float_precision="round_trip"``; pandas 3 is exact by default and deprecates the argument."""
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3:
        kwargs.setdefault("float_precision", "round_trip")
    return pd.read_csv(path, **kwargs)
