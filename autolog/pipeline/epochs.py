"""A run's epochs: the epoch index, where the epoch began, and the ``on_epoch`` values logged
in it, aggregated on their device.

The training thread only appends here: a Python number is added to a running Python total, a
tensor is appended to a short list that is folded into one device tensor every `FOLD` values
(one stack and one reduction: a kernel or two, never a read back), so an epoch of any length
holds a handful of tensors. At the epoch's end (`Epochs.close`) each name's aggregate is one
device tensor (or a float) that goes to the run's buffer like any logged value.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from autolog.pipeline.buffer import host_dtype, pack

FOLD = 256  # tensors of one name kept before they are folded into its device aggregate
REDUCE = ("mean", "sum", "max", "min")


class Aggregate:
    """The values of one name in one epoch (`op`: mean, sum, max or min)."""

    __slots__ = ("op", "count", "host", "pending", "device", "step", "on_step", "logger", "prog_bar",
                 "sync_dist")

    def __init__(self, op: str, on_step: bool, logger: bool, prog_bar: bool, sync_dist: bool) -> None:
        self.op = op
        self.count = 0
        self.host: float | None = None  # the aggregate of the Python numbers
        self.pending: list[torch.Tensor] = []
        self.device: dict[torch.device, torch.Tensor] = {}  # the folded aggregate per device
        self.step = 0  # the highest step of the values: where the aggregate is recorded
        self.on_step, self.logger, self.prog_bar, self.sync_dist = on_step, logger, prog_bar, sync_dist

    def add(self, value: Any, step: int) -> None:
        """Hot path: `value` is a float or a detached one-element tensor logged at `step`."""
        self.count += 1
        if step > self.step:
            self.step = step
        if type(value) is float:
            host = self.host
            if host is None:
                self.host = value
            elif self.op in ("mean", "sum"):
                self.host = host + value
            elif self.op == "max":  # a NaN, once in, stays (as in torch's reductions)
                self.host = value if value != value or value > host else host
            else:
                self.host = value if value != value or value < host else host
            return
        self.pending.append(value)
        if len(self.pending) >= FOLD:
            self.fold()

    def fold(self) -> None:
        """The pending tensors into the device aggregates (no read back)."""
        pending, self.pending = self.pending, []
        groups: dict[torch.device, list[torch.Tensor]] = {}
        for t in pending:
            groups.setdefault(t.device, []).append(t)
        with torch.no_grad():
            for dev, tensors in groups.items():
                pieces = pack(tensors, host_dtype(dev))
                flat = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
                part = self._reduce(flat)
                acc = self.device.get(dev)
                self.device[dev] = part if acc is None else self._combine(acc, part)

    def _reduce(self, flat: torch.Tensor) -> torch.Tensor:
        if self.op in ("mean", "sum"):
            return flat.sum()
        # NaN propagates, as torch.max/min and Lightning's reduction do
        return flat.amax() if self.op == "max" else flat.amin()

    def _combine(self, a: torch.Tensor, b: Any) -> torch.Tensor:
        if self.op in ("mean", "sum"):
            return a + b
        if not isinstance(b, torch.Tensor):
            b = torch.tensor(b, dtype=a.dtype, device=a.device)
        return torch.maximum(a, b) if self.op == "max" else torch.minimum(a, b)

    def value(self) -> Any:
        """The epoch's aggregate: a device tensor when any value was a tensor, else a float."""
        if self.pending:
            self.fold()
        if not self.device:
            host = self.host if self.host is not None else math.nan
            return host / self.count if self.op == "mean" and self.count else host
        with torch.no_grad():
            accs = list(self.device.values())
            target = next((a.device for a in accs if a.device.type != "cpu"), accs[0].device)
            total = accs[0].to(target, non_blocking=True)
            for acc in accs[1:]:  # several devices for one name: gathered on an accelerator
                total = self._combine(total, acc.to(target, non_blocking=True))
            if self.host is not None:
                total = self._combine(total, self.host)
            return total / self.count if self.op == "mean" else total


class Epochs:
    """The epoch state of one run (``run._epochs``); only the training thread changes it.

    `active` turns on at the first sign of epochs (a training DataLoader seen by the capture, or
    ``autolog.epoch_end()``): from then on every completed step records the ``epoch`` series.
    """

    def __init__(self) -> None:
        self.index = 0
        self.active = False
        self.external = False  # a framework (or the user) logs its own ``epoch``: no automatic one
        self.ended = False  # `autolog.epoch_end()` ended the last epoch: the loader's next pass ends none
        self.start_step = 0  # the run's step when the current epoch began
        self.aggregates: dict[str, Aggregate] = {}

    def add(self, name: str, value: Any, step: int, op: str, on_step: bool, logger: bool, prog_bar: bool,
            sync_dist: bool) -> None:
        agg = self.aggregates.get(name)
        if agg is None:
            agg = self.aggregates[name] = Aggregate(op, on_step, logger, prog_bar, sync_dist)
            agg.step = step
        agg.add(value, step)

    def check(self, name: str, op: str) -> None:
        """A name keeps one reduction for the epoch: a ValueError (at the call) otherwise."""
        agg = self.aggregates.get(name)
        if agg is not None and agg.op != op:
            raise ValueError(f"autolog.log: {name!r}: logged with reduce={agg.op!r} earlier in this "
                             f"epoch, now reduce={op!r}; one name has one reduction per epoch")

    def close(self) -> list[tuple[str, Aggregate, Any]]:
        """End the epoch: (name to record, aggregate, value) for each name logged with
        ``on_epoch=True`` in it (``name_epoch`` when it was also logged per step, else
        ``name``, as Lightning names them; recorded at ``aggregate.step``, the step of its last
        value); the next epoch begins."""
        out = [(f"{name}_epoch" if agg.on_step else name, agg, agg.value())
               for name, agg in self.aggregates.items() if agg.count]
        self.aggregates = {}
        self.index += 1
        return out
