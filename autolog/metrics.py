"""The vocabulary of automatic metrics: the names of the series autolog records by itself.

Used by the capture (which produces them), the pipeline (which expands the training thread's
step rows into points under these names) and the tools."""
from __future__ import annotations

LOSS = "train/loss"  # optimizer 0's objective; optimizer k: "train/loss/<label>"
GRAD_NORM = "train/grad_norm"  # clip_grad_norm_'s total norm; optimizer k: ".../<label>"
STEP_TIME = "perf/step_time"  # seconds per step of the run
SAMPLES_PER_SEC = "perf/samples_per_sec"
EPOCH = "epoch"  # the epoch at each step, once epochs are known


def series_name(base: str, label: str) -> str:
    """``base`` for optimizer 0 without a name, else ``base/<label>``."""
    return f"{base}/{label}" if label else base


def hparam_name(label: str, group: int, key: str) -> str:
    """``optim[/<label>]/<key>`` for param group 0, ``.../<key>/<group>`` for the others."""
    base = f"optim/{label}" if label else "optim"
    return f"{base}/{key}" if group == 0 else f"{base}/{key}/{group}"
