"""Every sink on one run: each reads back, with its backend's own reader, what the local store has;
a sink that cannot write is isolated while the others complete."""
import io
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from torch import nn

import autolog
from autolog.sinks import ConsoleSink, CSVSink, TensorBoardSink, WandbSink
from autolog.sinks.wandb_records import read_wandb_run
from helpers import read_csv

STEPS, LOG_EVERY = 12, 4


@pytest.fixture(scope="module")
def all_sinks_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("together")
    blocker = root / "not_a_dir"
    blocker.write_text("x")
    console_out = io.StringIO()
    broken_tb = TensorBoardSink(log_dir=str(blocker / "tb"))  # a "full disk": it cannot create its files
    sinks = ["local", TensorBoardSink(), WandbSink(mode="offline"), CSVSink(),
             ConsoleSink(stream=console_out), broken_tb]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DIR", str(root))
        mp.chdir(root)

        @autolog.track(project="together", dir=str(root / "runs"), sinks=sinks, log_every=LOG_EVERY)
        def train(lr=0.05, secret_token="abc123secret"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            autolog.watch(model, log="all")
            for step in range(STEPS):
                loss = model(torch.randn(8, 3)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step % 4 == 3:
                    autolog.log({"val/score": float(step) / 10, "val/nan": math.nan})
            autolog.log_image("sample", np.full((4, 4, 3), 200, dtype=np.uint8))
            return {"final": 1.5}

        train()
    [run] = autolog.list_runs(str(root / "runs"))
    return run, console_out.getvalue()


def test_the_run_finished_and_only_the_broken_sink_was_isolated(all_sinks_run):
    run, _ = all_sinks_run
    assert run.status == "finished"
    assert list(run.meta["sink_errors"]) == ["tensorboard"]
    assert "open" in run.meta["sink_errors"]["tensorboard"]["first_error"]
    assert run.config["secret_token"] == "***"
    assert {"train/loss", "optim/lr", "grad_norm/total", "val/score"} <= set(run.metrics)


def test_tensorboard_agrees_with_the_local_store(all_sinks_run):
    run, _ = all_sinks_run
    acc = ea.EventAccumulator(f"{run.path}/tensorboard", size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0})
    acc.Reload()
    for name, series in run.metrics.items():
        tb = [(e.step, e.value) for e in acc.Scalars(name)]
        assert [s for s, _ in tb] == [s for s, _ in series], name
        for (_, got), (_, want) in zip(tb, series):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-6), name
    for name, series in run.histograms.items():
        tb = acc.Histograms(name)
        assert [h.step for h in tb] == [s for s, _e, _c in series]
        assert list(tb[-1].histogram_value.bucket) == pytest.approx(series[-1][2])
    assert [i.step for i in acc.Images("sample")] == [STEPS]


def test_wandb_agrees_with_the_local_store(all_sinks_run):
    run, _ = all_sinks_run
    records = read_wandb_run(run.path)
    assert records.exit_code == 0
    assert records.config["secret_token"] == "***" and records.config["lr"] == 0.05
    for name, series in run.metrics.items():
        got = records.series(name)
        assert [s for s, _ in got] == [s for s, _ in series], name
        for (_, g), (_, w) in zip(got, series):
            assert (isinstance(g, float) and math.isnan(g) and math.isnan(w)) or g == pytest.approx(w), name
    assert records.summary["final"] == 1.5
    assert set(run.histograms) <= {k for row in records.history for k in row}


def test_csv_agrees_with_the_local_store(all_sinks_run):
    run, _ = all_sinks_run
    frame = read_csv(f"{run.path}/metrics.csv")  # long format: one row per point
    assert set(frame["name"]) == set(run.metrics)
    for name, series in run.metrics.items():
        rows = frame[frame["name"] == name].sort_values("step", kind="stable")
        assert rows["step"].tolist() == [s for s, _ in series], name
        for got, (_, want) in zip(rows["value"].tolist(), series):
            assert (math.isnan(got) and math.isnan(want)) or got == want, name


def test_console_summarises_the_same_run(all_sinks_run):
    run, text = all_sinks_run
    assert "finished" in text and run.path.split("/")[-1] in text
    last_loss = run.summary["train/loss"]
    assert f"{last_loss:.4g}"[:5] in text
