"""Plotting runs' metrics with matplotlib: ``autolog plot RUN [RUN ...] --metric NAME``.

One subplot per metric, stacked, one line per run, x = step. matplotlib is imported only here
and only when plotting, through its object API and the Agg canvas: no pyplot, no global backend
switch, nothing shown on screen.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from autolog.store.reader import RunData

__all__ = ["plot_runs", "default_filename", "run_labels"]

WIDTH, PANEL_HEIGHT, DPI = 8.0, 3.0, 100  # inches, inches per metric, dots per inch


def default_filename(metrics: Sequence[str]) -> str:
    """``train/loss`` -> ``train_loss.png``; several metrics joined with ``+``."""
    stem = "+".join(re.sub(r"[^A-Za-z0-9._-]+", "_", m).strip("._") or "metric" for m in metrics)
    return stem[:120] + ".png"


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Each run's name, with its id added where two runs share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 or r.name == r.id else f"{r.name} ({r.id})"
            for r in runs]


def plot_runs(runs: Sequence[RunData], metrics: Sequence[str], out: str | os.PathLike) -> str:
    """Draw `metrics` of `runs` into the image file `out` (PNG unless its extension names another
    format matplotlib writes, e.g. ``.svg``, ``.pdf``); returns its path.

    The image is ``WIDTH x PANEL_HEIGHT * len(metrics)`` inches at `DPI`. Non-finite values are
    gaps in the line. A run without a metric has no line in that panel.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError("autolog plot needs matplotlib: pip install 'autolog[media]'",
                          name="matplotlib") from exc
    fig = Figure(figsize=(WIDTH, PANEL_HEIGHT * len(metrics)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    labels = run_labels(runs)
    for ax, metric in zip(axes, metrics):
        for run, label in zip(runs, labels):
            series = run.metrics.get(metric)
            if not series:
                continue
            steps, values = np.asarray(series, dtype=np.float64).T
            values[~np.isfinite(values)] = np.nan
            ax.plot(steps, values, label=label, linewidth=1.2,
                    marker="o" if len(series) < 30 else None, markersize=3)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(out)
    if not os.path.splitext(path)[1]:
        path += ".png"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # format from the extension: png, svg, pdf...
    return path
