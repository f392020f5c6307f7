"""Errors and warnings of the automatic capture."""
from __future__ import annotations


class NonFiniteWarning(RuntimeWarning):
    """A loss or gradient went NaN/Inf (``watch(..., on_nan="warn")``, the default)."""


class NonFiniteError(FloatingPointError):
    """Raised at a hand-off when a loss or gradient went NaN/Inf (``watch(..., on_nan="raise")``).

    `step` is the first bad step; `parameter` the first parameter whose gradient was
    non-finite at that step (None when only the loss was).
    """

    def __init__(self, message: str, step: int, parameter: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.parameter = parameter
