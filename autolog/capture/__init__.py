"""Automatic capture: the loss of every optimizer step (the scalars ``backward()`` ran on since
the previous step, per optimizer), ``clip_grad_norm_``'s total norm, every optimizer step (step
count, hyperparameters, timing; without any optimizer, every backward is a step), and the models
given to `autolog.watch` (norms, update ratios, histograms, NaN/Inf alarm, graph).

Nothing here synchronises the device between hand-offs: values stay on their device in the
run's buffer and reach the host in the core's one copy per hand-off.

Module map: `options` (the ``capture=`` run option), `patches` (process-wide patches and hooks,
refcounted over open runs), `session` (one run's capture), `loss`, `optim`, `watch`, `stats`,
`nonfinite`, `sharded` (watch statistics of sharded models, reduced at the hand-offs), `timing`,
`safe`. This package's own import is light: `autolog.settings` imports
`options` from it, before the rest of autolog exists.
"""
from __future__ import annotations

from typing import Any


def instrument(run: Any) -> None:
    """Install the automatic capture for `run` (a `autolog.core.port.RunPort`); its undo runs
    when the run ends."""
    from autolog.capture.session import Capture

    Capture.start(run)
