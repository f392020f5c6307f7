"""The loss: the mean of the scalar losses whose backward ran in one step, kept on the device."""
from __future__ import annotations

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_loss(tensor: torch.Tensor) -> bool:
    """A real floating scalar (numel is host metadata: no sync)."""
    return tensor.numel() == 1 and tensor.is_floating_point()


class LossTracker:
    """A running sum and count for the current step, on the loss's device.

    Nothing is ever modified in place: the first loss of a step is kept as it is (a detached
    alias of the user's tensor), later ones are added out of place.
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self.sum: torch.Tensor | None = None
        self.count = 0

    def add(self, step: int, loss: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """Add the loss of a backward at `step`; returns the previous step's mean when `step`
        moved on without `take` (a run without optimizer whose step advanced another way)."""
        done = self.take() if self.step is not None and step != self.step else None
        value = loss.detach()  # detached: the sums below record no graph, no no_grad needed
        if value.dim():
            value = value.reshape(())
        if self.sum is None:
            self.sum, self.count, self.step = value, 1, step
        else:
            if self.count == 1 and self.sum.dtype in _LOW_PRECISION:
                self.sum = self.sum.float()
            self.sum = self.sum + value
            self.count += 1
        return done

    def take(self) -> tuple[int, torch.Tensor] | None:
        """(step, mean) of the pending losses, or None; clears them."""
        if self.sum is None:
            return None
        step, total, count = self.step, self.sum, self.count
        self.step, self.sum, self.count = None, None, 0
        return (step, total) if count == 1 else (step, total / count)
