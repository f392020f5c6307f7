"""Optimizers seen in a run: their order, labels, names of their hyperparameters, parameters.

Naming: the first optimizer that steps in the run is optimizer 0, the next ones 1, 2, ... An
optimizer's *label* is the name given with `name_optimizer`, else its index; optimizer 0
without a name has the empty label. Its series: ``train/loss[/<label>]``,
``train/grad_norm[/<label>]``, ``optim[/<label>]/lr`` for param group 0 and
``optim[/<label>]/lr/<g>`` for group g >= 1; the same for ``momentum``, ``beta1``/``beta2``
(from ``betas``) and ``weight_decay``, where the group has them.
"""
from __future__ import annotations

import operator
import weakref
from typing import Any

import torch

from autolog.metrics import GRAD_NORM, LOSS, hparam_name, series_name
from autolog.pipeline.records import SAME, StepNames

KEYS = ("lr", "momentum", "weight_decay")
_WATCHED_KEYS = (*KEYS, "betas")  # the param group entries the hyperparameter series come from

# name_optimizer: optimizer -> its name, for as long as it lives (any run, now or later)
_names: "weakref.WeakKeyDictionary[torch.optim.Optimizer, str]" = weakref.WeakKeyDictionary()


def inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper that keeps it as ``.optimizer``/``._optimizer``
    (Lightning's LightningOptimizer, Accelerate's AcceleratedOptimizer), else `optimizer`."""
    for _ in range(4):
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
        if inner is None:
            return optimizer
        optimizer = inner
    return optimizer


def name_optimizer(optimizer: Any, name: str) -> Any:
    """Give `optimizer` a name for its series (``train/loss/<name>``, ``optim/<name>/lr``,
    ``train/grad_norm/<name>``, ``grad_norm/.../total/<name>``); returns `optimizer`.

    The name holds for the optimizer's life, in the open run (from its next step) and in later
    ones. A name is a non-empty string without "/" that is not a number (numbers are the labels
    of unnamed optimizers).
    """
    inner = inner_optimizer(optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"autolog.name_optimizer: optimizer: expected a torch.optim.Optimizer, "
                        f"got {type(optimizer).__name__}")
    if not isinstance(name, str) or not name.strip() or "/" in name or name.strip().isdigit():
        raise ValueError(f"autolog.name_optimizer: name: expected a non-empty string without '/' "
                         f"that is not a number, got {name!r}")
    _names[inner] = name.strip()
    return optimizer


def given_name(optimizer: Any) -> str | None:
    try:
        return _names.get(optimizer)
    except TypeError:  # not weak-referenceable
        return None


def _getter(group: dict[str, Any]) -> Any:
    """A function giving the tuple of `group`'s hyperparameter entries (one C call)."""
    keys = [k for k in _WATCHED_KEYS if k in group]
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    if keys:
        key = keys[0]
        return lambda g: (g[key],)
    return lambda g: ()


def _value(value: Any) -> Any:
    """A float, a detached copy of a one-element tensor (it may change in place later), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        with torch.no_grad():
            return value.detach().reshape(()).clone()
    return None


_IS = operator.is_


class OptimizerState:
    """What a run knows about one optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, index: int, name: str | None = None) -> None:
        self.ref = weakref.ref(optimizer)
        self.index = index
        self.type = type(optimizer).__name__
        self.steps = 0
        self.skipped = 0  # steps GradScaler skipped (inf/NaN gradients)
        self.name: str | None = None
        self.label = ""
        self.loss_name = LOSS
        self.grad_norm_name = GRAD_NORM
        self.rename(name)
        self.hparam_step: int | None = None  # the run step its hyperparameters were last recorded at
        self._signature: tuple[int, ...] | None = None
        self.ids: frozenset[int] = frozenset()  # of its parameters, as of its last `param_ids`
        self.device: torch.device | None = None
        self.param_groups = len(optimizer.param_groups)

    def rename(self, name: str | None) -> None:
        """Use `name` (None: the index) in this optimizer's series from now on."""
        self.name = name
        self.label = name if name else ("" if self.index == 0 else str(self.index))
        self.loss_name = series_name(LOSS, self.label)
        self.grad_norm_name = series_name(GRAD_NORM, self.label)
        self.names = StepNames(self.loss_name, self.grad_norm_name)  # new object: rows keep theirs
        self._layout = None
        self.forget_hparams()

    def forget_hparams(self) -> None:
        """The next `step_hparams` records every value (at each hand-off, so that every batch
        holds them, and after a rename)."""
        self._getters: list[Any] | None = None
        self._raw: list[tuple] = []
        self._recorded: list[tuple[str, Any]] | None = None

    def step_hparams(self, optimizer: torch.optim.Optimizer) -> Any:
        """Per step: `SAME` when no hyperparameter changed since the previous call (the param
        groups' entries are the very same objects: one C call per group), else the list of
        (name, value) of `hparams` (also `SAME` when those values equal the last ones)."""
        groups = optimizer.param_groups
        getters = self._getters
        if getters is not None and len(groups) == len(getters):
            try:
                if len(getters) == 1:  # (the loop below, for the usual one group)
                    if all(map(_IS, getters[0](groups[0]), self._raw[0])):
                        return SAME
                else:
                    for getter, group, raw in zip(getters, groups, self._raw):
                        if not all(map(_IS, getter(group), raw)):
                            break
                    else:
                        return SAME
            except (KeyError, TypeError, IndexError):
                pass
        items = self.hparams(optimizer)
        self._getters = [_getter(g) for g in groups]
        self._raw = [getter(g) for getter, g in zip(self._getters, groups)]
        if any(isinstance(v, torch.Tensor) for raw in self._raw for v in raw):
            self._getters = None  # a tensor may change in place: read every step
        if self._recorded is not None and not any(isinstance(v, torch.Tensor) for _n, v in items) \
                and items == self._recorded:  # floats only: no tensor is ever compared
            return SAME
        self._recorded = items
        return items

    def first_device(self, optimizer: torch.optim.Optimizer) -> torch.device | None:
        """The device of the optimizer's first parameter (None: it has none)."""
        self.param_ids(optimizer)
        return self.device

    def param_ids(self, optimizer: torch.optim.Optimizer) -> frozenset[int]:
        """ids of the optimizer's parameters, recomputed when its groups change shape."""
        groups = optimizer.param_groups
        signature = tuple(len(g["params"]) for g in groups)
        if signature != self._signature:
            self._signature = signature
            self.param_groups = len(groups)
            self.ids = frozenset(id(p) for g in groups for p in g["params"])
            first = next((p for g in groups for p in g["params"]), None)
            self.device = first.device if first is not None else None
        return self.ids

    def hparams(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, Any]]:
        """(name, value) of every recorded hyperparameter of every param group."""
        groups = optimizer.param_groups
        layout = self._layout
        if layout is None or len(layout) != len(groups) or any(
                keys != tuple(g) for (keys, _names), g in zip(layout, groups)):
            layout = self._layout = [(tuple(g), self._names(i, g)) for i, g in enumerate(groups)]
        out: list[tuple[str, Any]] = []
        for group, (_keys, names) in zip(groups, layout):
            for name, key, item in names:
                raw = group[key] if item is None else group[key][item]
                value = float(raw) if type(raw) is float else _value(raw)
                if value is not None:
                    out.append((name, value))
        return out

    def _names(self, g: int, group: dict[str, Any]) -> list[tuple[str, str, int | None]]:
        """(metric name, group key, index into a betas pair or None) for one param group."""
        names = [(hparam_name(self.label, g, key), key, None) for key in KEYS if key in group]
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            names += [(hparam_name(self.label, g, key), "betas", i) for i, key in enumerate(("beta1", "beta2"))]
        return names

    def describe(self) -> dict[str, Any]:
        out = {"index": self.index, "type": self.type, "steps": self.steps, "param_groups": self.param_groups}
        if self.name:
            out["name"] = self.name
        if self.skipped:
            out["skipped_steps"] = self.skipped
        return out
