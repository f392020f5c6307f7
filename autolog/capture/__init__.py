"""Automatic capture (loss, optimizer, watch). Filled in by the capture work (issue 3)."""
from __future__ import annotations

from typing import Any


def instrument(run: Any) -> None:
    """Install the automatic capture for `run`; register its undo in `run._on_finish`."""
