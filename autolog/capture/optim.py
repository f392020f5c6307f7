"""Optimizers seen in a run: their order, names of their hyperparameters, their parameters.

Naming: the first optimizer that steps in the run is optimizer 0; its param group 0 gives
``optim/lr``, group g >= 1 ``optim/lr/<g>``. Optimizer k >= 1 gives ``optim/<k>/lr`` and
``optim/<k>/lr/<g>``. The same for ``momentum``, ``beta1``/``beta2`` (from ``betas``) and
``weight_decay``, where the group has them.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

KEYS = ("lr", "momentum", "weight_decay")


def hparam_name(opt_index: int, group: int, key: str) -> str:
    base = "optim" if opt_index == 0 else f"optim/{opt_index}"
    return f"{base}/{key}" if group == 0 else f"{base}/{key}/{group}"


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


class OptimizerState:
    """What a run knows about one optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, index: int) -> None:
        self.ref = weakref.ref(optimizer)
        self.index = index
        self.type = type(optimizer).__name__
        self.steps = 0
        self.hparam_step: int | None = None  # the run step its hyperparameters were last recorded at
        self._signature: tuple[int, ...] | None = None
        self._ids: frozenset[int] = frozenset()
        self.device: torch.device | None = None
        self.param_groups = len(optimizer.param_groups)
        self._layout: list[tuple[tuple[str, ...], list[tuple[str, str, int | None]]]] | None = None

    def param_ids(self, optimizer: torch.optim.Optimizer) -> frozenset[int]:
        """ids of the optimizer's parameters, recomputed when its groups change shape."""
        groups = optimizer.param_groups
        signature = tuple(len(g["params"]) for g in groups)
        if signature != self._signature:
            self._signature = signature
            self.param_groups = len(groups)
            self._ids = frozenset(id(p) for g in groups for p in g["params"])
            first = next((p for g in groups for p in g["params"]), None)
            self.device = first.device if first is not None else None
        return self._ids

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
        names = [(hparam_name(self.index, g, key), key, None) for key in KEYS if key in group]
        betas = group.get("betas")
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            names += [(hparam_name(self.index, g, key), "betas", i) for i, key in enumerate(("beta1", "beta2"))]
        return names

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.type, "steps": self.steps, "param_groups": self.param_groups}
