"""Shared helpers for the tests of automatic capture (tests/test_capture_*.py)."""
from __future__ import annotations

import torch
from torch import nn

import autolog


def open_run(tmp_path, **options):
    """A run that writes only to the local store under `tmp_path`."""
    options.setdefault("project", "capture")
    options.setdefault("sinks", ["local"])
    return autolog.run(dir=str(tmp_path), **options)


def read(run):
    return autolog.read_run(run.path)


def tiny(seed: int = 0, dropout: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(8, 2))
    return nn.Sequential(*layers)


def batches(n: int, size: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=g), torch.randn(size, 2, generator=g)) for _ in range(n)]


def series(data, name: str) -> dict[int, float]:
    """metrics[name] as {step: value}; fails on a repeated step."""
    points = data.metrics.get(name, [])
    steps = [s for s, _ in points]
    assert len(steps) == len(set(steps)), f"{name}: repeated steps {steps}"
    return dict(points)
