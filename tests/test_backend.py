"""Run.backend: the sinks' own objects (TensorBoard's SummaryWriter, the W&B run) for calls autolog
does not wrap, read back with TensorBoard's EventAccumulator and from the W&B offline run."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from torch.utils.tensorboard import SummaryWriter

import autolog
from autolog.sinks.wandb import WandbSink
from autolog.sinks.wandb_records import read_wandb_run
from autolog.testing import MemorySink


def test_tensorboard_backend_is_a_summary_writer_beside_the_sinks_files(tmp_path):
    with autolog.run(project="b", dir=str(tmp_path), sinks=["local", "tensorboard"], capture=False) as run:
        writer = run.backend("tensorboard")
        assert isinstance(writer, SummaryWriter)
        assert run.backend("tensorboard") is writer  # one per sink
        autolog.log("train/loss", 0.5, step=0)
        writer.add_scalar("custom/x", 2.0, 3)
        writer.add_histogram("custom/h", np.arange(10.0), 1)
        writer.add_image("custom/img", torch.zeros(3, 4, 5), 2)
        writer.add_text("custom/note", "hello", 0)
    assert run.backend("tensorboard") is None  # closed with the run
    acc = ea.EventAccumulator(os.path.join(run.path, "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("custom/x")] == [(3, 2.0)]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(0, 0.5)]
    assert [e.step for e in acc.Histograms("custom/h")] == [1]
    assert [e.step for e in acc.Images("custom/img")] == [2]
    assert writer.get_logdir() == os.path.join(run.path, "tensorboard")
    # what went through the backend is not in the run's log (autolog sync cannot replay it)
    assert set(autolog.read_run(run.path).metrics) == {"train/loss"}


def test_wandb_backend_is_the_sinks_run(tmp_path):
    import wandb

    with autolog.run(project="b", dir=str(tmp_path), sinks=["local", WandbSink(mode="offline")],
                     capture=False) as run:
        wb = run.backend("wandb")
        assert isinstance(wb, wandb.Run)
        wb.summary["custom/best"] = 0.25  # not history: safe beside the sink's own thread
        autolog.log("train/loss", 0.5, step=0)
    assert run.backend("wandb") is None
    records = read_wandb_run(run.path)
    assert records.run_id == wb.id
    assert records.summary["custom/best"] == 0.25 and records.summary["train/loss"] == 0.5


def test_no_backend_is_none(tmp_path):
    with autolog.run(project="b", dir=str(tmp_path), sinks=["local", MemorySink()], capture=False) as run:
        assert run.backend("wandb") is None  # not in the run
        assert run.backend("memory") is None  # a sink without a backend object
        assert run.backend("local") is None
        with pytest.raises(TypeError, match="sink name"):
            run.backend(WandbSink)
    with autolog.run(project="b", dir=str(tmp_path), sinks=["tensorboard"], mode="disabled") as off:
        assert off.backend("tensorboard") is None
        assert off.epoch == 0
        off.epoch_end()  # a no-op
