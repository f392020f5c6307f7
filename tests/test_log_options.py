"""autolog.log's Lightning-style options: a dict under a prefix, prog_bar, logger=False."""
from __future__ import annotations

import io
import os
import sys

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea

import autolog
from autolog.sinks.console import ConsoleSink
from autolog.testing import MemorySink


def _run(tmp_path, *sinks, **kw):
    return autolog.run(project="opts", dir=str(tmp_path), sinks=["local", *sinks], capture=False, **kw)


def test_a_dict_under_a_name_is_recorded_under_that_prefix(tmp_path):
    acc = torch.tensor(0.75)
    with _run(tmp_path) as run:
        autolog.log("performance", {"acc": acc, "recall": 0.5, "per_class": {"cat": 1, "dog": 0.25}}, step=2)
        autolog.log("performance", {"acc": 0.8}, step=3)
    metrics = autolog.read_run(run.path).metrics
    assert metrics["performance/acc"] == [(2, 0.75), (3, pytest.approx(0.8))]
    assert metrics["performance/recall"] == [(2, 0.5)]
    assert metrics["performance/per_class/cat"] == [(2, 1.0)]
    assert metrics["performance/per_class/dog"] == [(2, 0.25)]
    assert "performance" not in metrics


def test_a_bad_value_in_a_prefixed_dict_names_its_full_key_and_records_nothing(tmp_path):
    with _run(tmp_path) as run:
        with pytest.raises(TypeError, match="'performance/recall'"):
            autolog.log("performance", {"acc": 0.5, "recall": "high"})
        with pytest.raises(ValueError, match="'performance/acc' must be a scalar"):
            autolog.log("performance", {"acc": torch.ones(2)})
        autolog.log("ok", 1.0)
    assert set(autolog.read_run(run.path).metrics) == {"ok"}


def test_logger_false_reaches_the_console_bar_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the bar's plain-line form: readable text
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    memory = MemorySink()
    with _run(tmp_path, "tensorboard", "csv", memory, ConsoleSink(stream=out, progress=True, interval=0.0)) as run:
        autolog.log("train/loss", 0.5, step=0)
        autolog.log("speed", torch.tensor(123.0), step=0, logger=False)
        assert run.flush(wait=True)
        autolog.log("train/loss", 0.25, step=1)
        autolog.log({"speed": 7.0, "eta": 3}, step=1, logger=False)
    data = autolog.read_run(run.path)
    assert set(data.metrics) == {"train/loss"}  # not in the log, the store or the summary
    assert set(data.summary) == {"train/loss"}
    acc = ea.EventAccumulator(os.path.join(run.path, "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"]
    with open(os.path.join(run.path, "metrics.csv")) as fh:
        assert "speed" not in fh.read()
    assert "speed" not in memory.names()  # a sink sees them only in Batch.bar, which it may ignore
    assert [p[:3] for b in memory.batches for p in b.bar] == [("speed", 0, 123.0), ("speed", 1, 7.0),
                                                               ("eta", 1, 3.0)]
    lines = out.getvalue().splitlines()
    assert "speed=123" in lines[0]  # the device value, copied with the hand-off
    assert "speed=7" in lines[1] and "eta=3" in lines[1]
    summary = out.getvalue().split("autolog: run", 1)[1]
    assert "speed" not in summary and "train/loss" in summary  # the summary is the run's


def test_prog_bar_marks_the_names_for_the_bar_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    memory = MemorySink()
    with _run(tmp_path, memory, ConsoleSink(stream=out, progress=True, interval=0.0)) as run:
        autolog.log("hidden", 1.0, step=0)
        autolog.log("val", {"acc": 0.9}, step=0, prog_bar=True)
    assert {n for b in memory.batches for n in b.prog_bar} == {"val/acc"}
    assert autolog.read_run(run.path).metrics["val/acc"] == [(0, 0.9)]
    first = out.getvalue().splitlines()[0]
    assert "val/acc=0.9" in first and "hidden" not in first


def test_option_errors_raise_at_the_call(tmp_path):
    with _run(tmp_path) as run:
        with pytest.raises(ValueError, match="on_step and on_epoch are both False"):
            autolog.log("x", 1.0, on_step=False, on_epoch=False)
        with pytest.raises(ValueError, match="reduce"):
            autolog.log("x", 1.0, reduce="median")
        autolog.log("x", 2.0, step=0)
    assert autolog.read_run(run.path).metrics == {"x": [(0, 2.0)]}
