"""The NaN/Inf alarm, without a per-step sync.

Gradients: at every optimizer step, the per-parameter gradient norms of watched models are
taken on the device (one fused ``_foreach_norm``; at statistics steps they are also the
``grad_norm/*`` values) and kept as they are: nothing else runs per step, nothing is read. At
each hand-off the steps' norms are folded, on the device, into a vector holding each
parameter's first non-finite step (`fold`: a few kernels per hand-off, not per step). Those
vectors travel to the host with the hand-off as typed probes (`Batch.probes`, kind
``"nonfinite"``) that no sink or log ever sees; the writer thread finds the first bad step and
parameter in them.

Losses: every step's ``train/loss`` (and ``train/loss/<label>`` of the other optimizers) already
travels with the hand-offs; `prepare` scans them.

on_nan="warn" (default): on the writer thread, the first finding is written to
``meta["nonfinite"] = {"step", "parameter", "loss"}`` and warned about (`NonFiniteWarning`).
on_nan="raise": at each hand-off the training thread reads the pair and the losses since the
previous hand-off (one sync, at the flush boundary only) and raises `NonFiniteError`.
on_nan="ignore": nothing is checked.
"""
from __future__ import annotations

import itertools
import math
import operator
import threading
from typing import Any

import numpy as np
import torch

from autolog.capture.errors import NonFiniteError, NonFiniteWarning
from autolog.capture.safe import warn_user

POLICIES = ("warn", "raise", "ignore")
PROBE = "nonfinite"  # the kind of this monitor's `Batch.probes`
LOSS = "train/loss"
_LOSS_SERIES = LOSS + "/"
_NEVER = 2**62  # "no bad step" while reducing
_VALUE = operator.itemgetter(2)  # a scalar point's value


class NonFiniteMonitor:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.policy = "warn"  # set through `policy`
        self.names: list[str] = []  # parameter names; a device-side index points in here
        self._offsets: dict[tuple[str, ...], int] = {}
        # (device, parameter names) -> (offset of the names in self.names, first bad step per
        # parameter, -1 while finite), on that device
        self._groups: dict[tuple[torch.device, tuple[str, ...]], tuple[int, torch.Tensor]] = {}
        # the same keys -> (run steps, norm vectors) of the steps since the last fold
        self._pending: dict[tuple[torch.device, tuple[str, ...]], tuple[list[int], list[torch.Tensor]]] = {}
        self.unchecked_losses: list[tuple[int, torch.Tensor]] = []  # on_nan="raise" only
        self._lock = threading.Lock()
        self.loss_step: int | None = None
        self.grad: tuple[int, str] | None = None
        self.finding: dict[str, Any] | None = None
        self.announced = False

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._policy = value
        self.active = value != "ignore"  # plain attributes: read at every step
        self.raises = value == "raise"

    # -- training thread, every step ---------------------------------------------------------
    def check_gradients(self, names: tuple[str, ...], norms: Any, step: int) -> None:
        """Keep one step's gradient norms of these parameters (one device: a 1-D tensor, or a
        sequence of 0-d tensors) for the next `fold`: no kernel, no value read."""
        device = norms.device if isinstance(norms, torch.Tensor) else norms[0].device
        pending = self._pending.get((device, names))
        if pending is None:
            pending = self._pending[(device, names)] = ([], [])
        pending[0].append(step)
        pending[1].append(norms)

    def fold(self) -> None:
        """Fold the norms kept since the last fold into each parameter's first-bad-step vector
        (-1 while finite), on the device, without reading a value (the steps reach the device
        as a pinned, non-blocking copy). At hand-offs and reduction points."""
        pending, self._pending = self._pending, {}
        with torch.no_grad():
            for key, (steps, norms) in pending.items():
                device, names = key
                group = self._groups.get(key)
                if group is None:
                    offset = self._offsets.get(names)
                    if offset is None:
                        offset = self._offsets[names] = len(self.names)
                        self.names.extend(names)
                    first = torch.full((len(names),), -1, dtype=torch.int64, device=device)
                else:
                    offset, first = group
                at = torch.tensor(steps, dtype=torch.int64)
                if device.type != "cpu":
                    at = at.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else at.to(device)
                if set(map(type, norms)) == {torch.Tensor}:  # 1-D norm vectors
                    matrix = torch.stack(norms)  # steps x parameters
                else:  # steps' 0-d norms (few parameters), with some 1-D: one stack of them all
                    matrix = torch.stack(list(itertools.chain.from_iterable(norms))).reshape(len(steps), -1)
                bad = ~torch.isfinite(matrix)
                earliest = torch.where(bad, at.unsqueeze(1), _NEVER).amin(0)
                first = torch.where((first >= 0) | (earliest == _NEVER), first, earliest)
                self._groups[key] = (offset, first)

    def groups(self) -> list[tuple[tuple[torch.device, tuple[str, ...]], tuple[int, torch.Tensor]]]:
        """Every (key, (offset, first-bad-step vector)), folded up to now (sharded reduction)."""
        self.fold()
        return list(self._groups.items())

    def set_group(self, key: tuple[torch.device, tuple[str, ...]], group: tuple[int, torch.Tensor]) -> None:
        """Replace a group's first-bad-step vector (by its reduction over ranks)."""
        self._groups[key] = group

    def add_loss(self, step: int, loss: torch.Tensor) -> None:
        if self.policy == "raise":
            self.unchecked_losses.append((step, loss))

    # -- training thread, at a hand-off ------------------------------------------------------
    def stage(self, buffer: Any, step: int) -> None:
        """Send the device-side findings along with this hand-off: each group's vector of first
        bad steps, as it is (one copy with the hand-off's others; the writer finds the first)."""
        if not self.active:
            return
        self.fold()
        for offset, first in self._groups.values():
            buffer.probe(PROBE, offset, step, first)

    def raise_if_bad(self) -> None:
        """on_nan="raise": read the findings now (a sync, at the flush boundary) and raise."""
        if self.policy != "raise" or self.announced:
            return
        losses, self.unchecked_losses = self.unchecked_losses, []
        loss_step = None
        by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
        for step, value in losses:
            by_device.setdefault(value.device, []).append((step, value))
        for items in by_device.values():
            with torch.no_grad():
                values = torch.stack([v.reshape(()).to(torch.float64) for _s, v in items])
                flags = (~torch.isfinite(values)).tolist()  # the one allowed sync
            for (step, _v), bad in zip(items, flags):
                if bad:
                    loss_step = step if loss_step is None else min(loss_step, step)
                    break
        bad = [_first_bad(offset, first.tolist())  # a sync, allowed at the flush boundary
               for offset, first in list(self._groups.values())]
        grad = self._named_first(bad)
        if self._update(loss_step, grad):
            finding = self.finding
            assert finding is not None
            self.announced = True
            raise NonFiniteError(_message(finding), finding["step"], finding["parameter"])

    # -- writer thread -----------------------------------------------------------------------
    def prepare(self, batch: Any) -> None:
        """Read this monitor's probes of `batch`, scan its losses, report a first finding."""
        if not self.active:
            return
        loss_step = None
        scalars = batch.scalars
        # one C-level sum first: finite (the usual case) means no value of the batch is NaN/Inf
        if scalars and not math.isfinite(sum(map(_VALUE, scalars))):
            for point in scalars:
                if (point[0] == LOSS or point[0].startswith(_LOSS_SERIES)) and not math.isfinite(point[2]):
                    loss_step = point[1] if loss_step is None else min(loss_step, point[1])
        columns = batch.columns
        if columns is not None and len(columns) and not np.isfinite(columns.values).all():
            bad = ~np.isfinite(columns.values)
            for key in np.unique(columns.keys[bad]).tolist():
                name = columns.names[key]
                if name == LOSS or name.startswith(_LOSS_SERIES):
                    step = int(columns.steps[bad & (columns.keys == key)].min())
                    loss_step = step if loss_step is None else min(loss_step, step)
        grad = self._named_first([_first_bad(probe.key, probe.values) for probe in batch.probes
                                  if probe.kind == PROBE])
        if self._update(loss_step, grad) and not self.announced:
            if self.policy == "warn" or self.run.finished:  # "raise" raises on the training thread
                self.announced = True
                warn_user(_message(self.finding), NonFiniteWarning)  # told on the user's line

    # -- both --------------------------------------------------------------------------------
    def _named_first(self, found: list[tuple[int, int] | None]) -> tuple[int, str] | None:
        """The earliest of the groups' (step, parameter index) findings, with its name."""
        found = [f for f in found if f is not None and 0 <= f[1] < len(self.names)]
        if not found:
            return None
        step, index = min(found)
        return step, self.names[index]

    def _update(self, loss_step: int | None, grad: tuple[int, str] | None) -> bool:
        """Merge findings; write ``meta["nonfinite"]`` once. True when there is a finding."""
        with self._lock:
            if loss_step is not None and (self.loss_step is None or loss_step < self.loss_step):
                self.loss_step = loss_step
            if grad is not None and (self.grad is None or grad[0] < self.grad[0]):
                self.grad = grad
            if self.finding is None and (self.loss_step is not None or self.grad is not None):
                steps = [s for s in (self.loss_step, self.grad[0] if self.grad else None) if s is not None]
                step = min(steps)
                parameter = self.grad[1] if self.grad is not None and self.grad[0] == step else None
                self.finding = {"step": step, "parameter": parameter, "loss": self.loss_step == step}
                self.run.meta["nonfinite"] = dict(self.finding)
            return self.finding is not None


def _message(finding: dict[str, Any]) -> str:
    where = []
    if finding["parameter"] is not None:
        where.append(f"the gradient of {finding['parameter']!r}")
    if finding["loss"]:
        where.append("the loss")
    return (f"autolog: non-finite (NaN/Inf) value first at step {finding['step']}: "
            f"{' and '.join(where)}. Recorded in the run's meta['nonfinite'].")


def _first_bad(offset: int, first: list[float]) -> tuple[int, int] | None:
    """(step, index in the monitor's names) of a group's earliest bad step, the first of its
    parameters bad then; None while every one is finite (-1)."""
    if not first or max(first) < 0:
        return None
    step = min(s for s in first if s >= 0)
    return int(step), offset + first.index(step)
