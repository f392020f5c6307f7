"""`autolog compare`, `plot`, `replay`: real runs in tmp_path, the CLI called in-process."""
import json
import math
import os
import re
import time

import numpy as np
import pytest
import torch

import autolog
from autolog.store import format as store
from autolog.tools import cli, replay
from helpers import read_csv

COUNTS = [[1.0, 2.0, 3.0, 0.0], [0.0, 4.0, 4.0, 1.0], [2.0, 2.0, 2.0, 2.0]]


def _make_run(root, lr, opt, scale, name=None):
    with autolog.run(dir=str(root), project="p", sinks=["local"], name=name,
                     config={"lr": lr, "opt": opt, "seed": 1, "model.width": 8}) as run:
        for step in range(6):
            autolog.log({"train/loss": scale / (step + 1), "val/acc": 0.1 * step * scale},
                        step=step)
        for step in range(3):
            run.buffer.histogram("gradients/w", step * 2, torch.tensor(COUNTS[step]), -1.0,
                                  1.0 + step, time.time())
        autolog.log_image("samples", np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), step=2)
        autolog.log_text("note", "hello *replay*", step=1)
    return autolog.read_run(run.path)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    a = _make_run(root, 0.1, "sgd", 1.0, name="alpha")
    b = _make_run(root, 0.01, "adam", 2.0, name="beta")
    return root, a, b


def _cli(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------ compare

def test_compare_table(runs, capsys):
    root, a, b = runs
    code, out, _ = _cli(capsys, "compare", "alpha", b.id[:18], "--dir", str(root))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["alpha", "beta"]
    row = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.split()}
    assert row["id"] == [a.id, b.id]
    assert row["status"] == ["finished", "finished"]
    assert row["lr"] == ["0.1", "0.01"] and row["opt"] == ["sgd", "adam"]
    assert "seed" not in row and "model.width" not in row
    assert "config: 2 of 4 keys differ" in out and "(2 equal keys not shown)" in out
    # summary: last values; lower loss and higher accuracy are best (beta: scale 2)
    assert row["train/loss"] == ["0.166667", "*", "0.333333"]
    assert row["val/acc"] == ["0.5", "1", "*"]


def test_compare_metric_choice_and_json(runs, capsys):
    root, a, b = runs
    code, out, _ = _cli(capsys, "compare", a.path, b.path, "--metric", "val/*", "--json")
    data = json.loads(out)
    assert code == 0
    assert [r["id"] for r in data["runs"]] == [a.id, b.id]
    assert data["config"] == {"lr": [0.1, 0.01], "opt": ["sgd", "adam"]}
    assert data["config_equal"] == {"seed": 1, "model.width": 8}
    assert data["summary"] == {"val/acc": [a.summary["val/acc"], b.summary["val/acc"]]}
    assert data["best"] == {"val/acc": b.id}

    with pytest.raises(SystemExit, match="no metric 'val/ac'.*did you mean val/acc"):
        cli.main(["compare", a.path, b.path, "--metric", "val/ac"])
    with pytest.raises(SystemExit, match="at least two runs"):
        cli.main(["compare", a.path])


def test_compare_shows_missing_values_and_equal_nan(tmp_path, capsys):
    root = tmp_path / "runs"
    paths = []
    for config in ({"x": float("nan"), "only_a": 1}, {"x": float("nan")}):
        with autolog.run(dir=str(root), project="p", sinks=["local"], config=config) as run:
            autolog.log({"m": 1.0}, step=0)
        paths.append(run.path)
    code, out, _ = _cli(capsys, "compare", *paths)
    assert code == 0
    row = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert row["only_a"] == ["1", "-"] and "x" not in row  # NaN equals NaN for "differs"
    assert row["m"] == ["1", "1"]  # a tie has no best


# ------------------------------------------------------------------------ plot

def test_plot_writes_png(runs, capsys, tmp_path):
    from PIL import Image

    root, a, b = runs
    out_file = tmp_path / "plots" / "cmp.png"
    code, out, _ = _cli(capsys, "plot", "alpha", "beta", "--dir", str(root),
                        "--metric", "train/loss", "--metric", "val/acc", "--out", str(out_file))
    assert code == 0 and out.strip() == str(out_file)
    with Image.open(out_file) as img:
        assert img.format == "PNG" and img.size == (800, 600)  # 8 x (3 per metric) in at 100 dpi

    # default file name: the metric, sanitized, in the current directory (tmp_path)
    code, out, _ = _cli(capsys, "plot", a.path, "--metric", "train/loss")
    assert out.strip() == str(tmp_path / "train_loss.png")
    with Image.open(tmp_path / "train_loss.png") as img:
        assert img.size == (800, 300)


def test_plot_errors(runs, capsys):
    root, a, _ = runs
    with pytest.raises(SystemExit, match="choose metrics with --metric.*train/loss"):
        cli.main(["plot", a.path])
    with pytest.raises(SystemExit, match="no metric 'nope'"):
        cli.main(["plot", a.path, "--metric", "nope"])


def test_plot_without_matplotlib_names_the_extra(runs, monkeypatch):
    import sys

    _, a, _ = runs
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(SystemExit, match=r"pip install 'autolog\[media\]'"):
        cli.main(["plot", a.path, "--metric", "train/loss"])


# ------------------------------------------------------------------------ replay

def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                "tensors": 0})
    acc.Reload()
    return acc


def test_replay_to_tensorboard(runs, capsys):
    root, a, _ = runs
    code, out, _ = _cli(capsys, "replay", "alpha", "--dir", str(root), "--to", "tensorboard")
    tb_dir = os.path.join(a.path, "tensorboard")
    assert code == 0 and tb_dir in out and "12 scalar points, 3 histograms, 2 media" in out
    acc = _accumulator(tb_dir)
    tags = acc.Tags()
    assert set(tags["scalars"]) == set(a.metrics)
    for name, series in a.metrics.items():
        events = acc.Scalars(name)
        assert [e.step for e in events] == [s for s, _ in series]
        assert [e.value for e in events] == pytest.approx([v for _, v in series], rel=1e-6)
    # wall times are the live run's, not the replay's
    assert acc.Scalars("train/loss")[0].wall_time <= a.meta["end_timestamp"]
    hist = acc.Histograms("gradients/w")
    assert [h.step for h in hist] == [0, 2, 4]
    assert [list(h.histogram_value.bucket) for h in hist] == COUNTS
    edges = a.histograms["gradients/w"][2][1]
    assert list(hist[2].histogram_value.bucket_limit) == pytest.approx(edges[1:])
    [image] = acc.Images("samples")
    assert (image.step, image.height, image.width) == (2, 4, 5)
    assert "note" in tags["tensors"] and "_hparams_/session_end_info" in tags["tensors"]

    # a second replay into the same directory is refused; --log-dir writes elsewhere
    assert cli.main(["replay", a.path, "--to", "tensorboard"]) == 1
    assert re.search("already holds TensorBoard event files.*--log-dir", capsys.readouterr().err)
    other = os.path.join(os.path.dirname(root), "tb")
    code, out, _ = _cli(capsys, "replay", a.path, "--to", "tensorboard", "--log-dir", other)
    assert code == 0
    again = _accumulator(os.path.join(other, a.id))
    assert [e.value for e in again.Scalars("val/acc")] == [e.value for e in acc.Scalars("val/acc")]
    code, _, _ = _cli(capsys, "replay", a.path, "--to", "tensorboard", "--force")
    assert code == 0 and len(os.listdir(tb_dir)) == 2


def test_replay_to_csv(runs, capsys):
    _, a, _ = runs
    code, out, _ = _cli(capsys, "replay", a.path, "--to", "csv")
    assert code == 0
    frame = read_csv(os.path.join(a.path, "metrics.csv"))
    assert sorted(set(frame["step"])) == list(range(6))
    for name, series in a.metrics.items():
        rows = frame[frame["name"] == name]
        assert list(zip(rows["step"], rows["value"])) == series


def test_replay_to_wandb_offline(runs, capsys):
    from autolog.sinks.wandb_records import read_wandb_run

    _, a, _ = runs
    code, _, _ = _cli(capsys, "replay", a.path, "--to", "wandb", "--offline")
    assert code == 0
    records = read_wandb_run(a.path)
    assert (records.project, records.name, records.exit_code) == ("p", "alpha", 0)
    assert records.config["lr"] == 0.1
    assert records.series("train/loss") == a.metrics["train/loss"]
    assert cli.main(["replay", a.path, "--to", "wandb"]) == 1
    assert "already holds a W&B run" in capsys.readouterr().err


def test_replay_refusals(runs, capsys):
    _, a, _ = runs
    assert cli.main(["replay", a.path, "--to", "local"]) == 1
    assert "already in the local store" in capsys.readouterr().err
    # several targets: every one that can be done is done, each refusal told, exit status 1
    code = cli.main(["replay", a.path, "--to", "csv,tensorbord"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "unknown sink 'tensorbord'; did you mean tensorboard?" in err
    assert "csv          ok" in out and "tensorbord   REFUSED" in out
    assert os.path.exists(os.path.join(a.path, "metrics.csv"))


def test_status_mapping(runs):
    _, a, _ = runs
    assert replay.run_result(a).status == "finished"
    record = store.read_json(os.path.join(a.path, store.RUN_FILE))
    store.write_json_atomic(os.path.join(a.path, store.RUN_FILE), {**record, "status": "running"})
    crashed = autolog.read_run(a.path)  # "running" with nobody holding the lock
    assert crashed.status == "crashed" and replay.run_result(crashed).status == "failed"
    assert replay.STATUS_MAP["running"] == "interrupted"
    assert math.isclose(replay.run_result(crashed).summary["train/loss"], 1 / 6)
