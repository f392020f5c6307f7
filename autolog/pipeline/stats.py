"""Statistics computed on the device with fused/foreach ops; nothing here reads a value back.

Every function returns device tensors and leaves its inputs untouched.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

BINS = 64


def norm_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def by_device(items: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[torch.device, list[str], list[torch.Tensor]]]:
    """`items` grouped by device, in first-seen order."""
    groups: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
    for name, tensor in items:
        names, tensors = groups.setdefault(tensor.device, ([], []))
        names.append(name)
        tensors.append(tensor)
    return [(device, names, tensors) for device, (names, tensors) in groups.items()]


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor (one device), as one 1-D tensor: one fused kernel per dtype."""
    with torch.no_grad():
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=norm_dtype(tensors)))


def total_norm(vectors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """L2 norm over several per-device norm vectors; None when that needs a host copy
    (vectors on the CPU and on an accelerator)."""
    if len(vectors) == 1:
        with torch.no_grad():
            return torch.linalg.vector_norm(vectors[0])
    devices = {v.device.type for v in vectors}
    if "cpu" in devices and len(devices) > 1:
        return None
    target = vectors[0].device
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.cat([v.to(target, non_blocking=True) for v in vectors]))


def histogram(tensor: torch.Tensor, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, low, high): `bins` equal-width bins between the finite minimum and maximum.

    Non-finite values are left out. Computed on the tensor's device without reading the range
    back: the values are mapped onto [0, 1] and binned with fixed bounds.
    """
    with torch.no_grad():
        x = flat_float(tensor)
        low, high = finite_range(x)
        return bin_between(x, low, high, bins)


def flat_float(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as a 1-D float32/float64 tensor (a view when it already is one)."""
    x = tensor.detach().reshape(-1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def finite_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(finite minimum, finite maximum) of 1-D `x` as 0-d device tensors; (inf, -inf) when it
    has no finite value (or no value)."""
    if x.numel() == 0:
        inf = torch.full((), math.inf, dtype=x.dtype, device=x.device)
        return inf, -inf
    # non-finite values replaced by the identity of each reduction (one fused pass each; the
    # CPU's isfinite and where are several times slower)
    return (x.nan_to_num(nan=math.inf, posinf=math.inf, neginf=math.inf).amin(),
            x.nan_to_num(nan=-math.inf, posinf=-math.inf, neginf=-math.inf).amax())


def bin_between(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int = BINS
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts, low, high): finite values of 1-D `x` in `bins` equal-width bins from `low` to
    `high` (device tensors; 0 and 1 when ``low > high``, i.e. no finite value)."""
    empty = low > high  # no finite value at all
    low = torch.where(empty, 0.0, low)
    high = torch.where(empty, 1.0, high)
    span = high - low
    scaled = (x - low) / torch.where(span > 0, span, 1.0)
    counts = torch.histc(scaled, bins, 0.0, 1.0)
    return counts, low, high


def snapshot(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of `tensors` (the weights before an optimizer step)."""
    with torch.no_grad():
        return [t.detach().clone() for t in tensors]


def update_ratios(before: list[torch.Tensor], before_norms: torch.Tensor,
                  after: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖after − before‖ / ‖before‖ per tensor (0 when unchanged, inf when a zero tensor moved).

    Consumes `before` (our own copies): the differences are computed into it in place."""
    with torch.no_grad():
        torch._foreach_sub_(before, [a.detach() for a in after])
        delta = norms(before)
        return torch.where(delta == 0, torch.zeros_like(delta), delta / before_norms.to(delta.dtype))
