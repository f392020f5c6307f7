"""The loss of an optimizer step: the objective whose gradient the step applies, kept on the device.

`Objective` sums the scalars ``backward()`` was called on since the previous optimizer step (of
any optimizer); the optimizer that steps next takes the sum. With ``loss / accum`` per
micro-batch that is the mean micro-batch loss; with two backward calls (a GAN's D on real and on
fake data) their sum. A closure's step takes the closure's first value (`FirstCall`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_loss(tensor: torch.Tensor) -> bool:
    """A real floating scalar (numel is host metadata: no sync)."""
    return tensor.numel() == 1 and tensor.is_floating_point()


class Objective:
    """A running sum on the loss's device; nothing read back.

    The user's tensor is never modified: the first value of a step is kept as a detached alias,
    the second is added out of place (a tensor of our own, float32 at least), later ones are
    added into that tensor in place (no allocation).
    """

    __slots__ = ("sum", "owned")

    def __init__(self) -> None:
        self.sum: torch.Tensor | float | None = None
        self.owned = False  # whether `sum` is our own tensor (may be added to in place)

    def add(self, value: torch.Tensor | float) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach()  # detached: the sums record no graph, no no_grad needed
            if value.dim():
                value = value.reshape(())
        total = self.sum
        if total is None:
            self.sum, self.owned = value, False
        elif self.owned:
            total.add_(value)  # type: ignore[union-attr]
        elif isinstance(total, torch.Tensor) or isinstance(value, torch.Tensor):
            base, other = (total, value) if isinstance(total, torch.Tensor) else (value, total)
            if base.dtype in _LOW_PRECISION:  # type: ignore[union-attr]
                base = base.float()  # type: ignore[union-attr]
            self.sum, self.owned = base + other, True
        else:
            self.sum = total + value

    def take(self) -> torch.Tensor | float | None:
        """The sum since the last `take` (None: no backward), cleared."""
        total, self.sum, self.owned = self.sum, None, False
        return total

    def __bool__(self) -> bool:
        return self.sum is not None


class FirstCall:
    """A closure passed to ``optimizer.step(closure)``, called through; remembers what its first
    call gave: its return value when that is a number or a floating scalar tensor, else the sum
    of the backward calls made during it (`segment`). Backward calls of later calls (a line
    search's evaluations) belong to no step."""

    __slots__ = ("fn", "calls", "inside", "segment", "value")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.inside = 0  # depth of calls in progress
        self.segment = Objective()
        self.value: torch.Tensor | float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        first = self.calls == 1
        self.inside += 1
        try:
            out = self.fn(*args, **kwargs)
        finally:
            self.inside -= 1
        if first:
            if isinstance(out, torch.Tensor) and is_loss(out):
                self.value = out
            elif isinstance(out, (int, float)) and not isinstance(out, bool):
                self.value = float(out)
        return out

    @property
    def collecting(self) -> bool:
        """Whether a backward now belongs to the first call."""
        return self.calls == 1 and self.inside > 0

    def result(self) -> torch.Tensor | float | None:
        """The first call's value (None: it was never called and made no backward)."""
        segment = self.segment.take()
        return self.value if self.value is not None else segment
