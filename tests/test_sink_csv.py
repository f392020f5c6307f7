"""CSVSink: driven with hand-made records, read back with `csv` and pandas."""
from __future__ import annotations

import csv
import math
import os

import pandas as pd
import pytest

import autolog
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import resolve_sink
from autolog.sinks.csv import CSVSink, rows_from_scalars

RESULT = RunResult("finished", {}, {}, {})


def run_info(path) -> RunInfo:
    return RunInfo(id="r1", name="r1", project="p", path=str(path), config={}, meta={})


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_registered_by_name():
    sink = resolve_sink("csv")
    assert isinstance(sink, CSVSink) and sink.name == "csv"


def test_one_row_per_step_read_back_by_csv_and_pandas(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[
        ("train/loss", 0, 0.1 + 0.2, 100.0), ("optim/lr", 0, 1e-3, 100.5),
        ("train/loss", 1, 1 / 3, 101.0), ("optim/lr", 1, 9e-4, 101.25),
    ], step=2))
    sink.close(RESULT)

    path = tmp_path / "metrics.csv"
    rows = read_rows(path)
    assert list(rows[0]) == ["step", "wall_time", "train/loss", "optim/lr"]
    assert [(r["step"], float(r["wall_time"])) for r in rows] == [("0", 100.5), ("1", 101.25)]
    assert [float(r["train/loss"]) for r in rows] == [0.1 + 0.2, 1 / 3]  # exact round trip

    df = pd.read_csv(path)
    assert df["step"].tolist() == [0, 1]
    assert df["train/loss"].tolist() == [0.1 + 0.2, 1 / 3]
    assert df["optim/lr"].tolist() == [1e-3, 9e-4]
    assert df["train/loss"].dtype == float


def test_rows_visible_after_each_batch_before_close(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    assert read_rows(tmp_path / "metrics.csv") == []
    assert (tmp_path / "metrics.csv").read_text() == "step,wall_time\n"
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))
    sink.write(Batch(scalars=[("a", 1, 2.0, 2.0)]))
    assert [r["a"] for r in read_rows(tmp_path / "metrics.csv")] == ["1.0", "2.0"]
    sink.close(RESULT)


def test_nan_and_inf_read_back_as_floats(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[("x", 0, math.nan, 1.0), ("x", 1, math.inf, 2.0),
                              ("x", 2, -math.inf, 3.0), ("x", 3, 0.5, 4.0)]))
    sink.close(RESULT)
    values = pd.read_csv(tmp_path / "metrics.csv")["x"].tolist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 0.5]
    assert [float(r["x"]) for r in read_rows(tmp_path / "metrics.csv")][1:] == values[1:]


def test_new_keys_rewrite_the_header_atomically_and_pad_old_rows(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    path = tmp_path / "metrics.csv"
    sink.write(Batch(scalars=[("train/loss", s, float(s), float(s)) for s in range(3)]))
    inode = os.stat(path).st_ino
    sink.write(Batch(scalars=[("train/loss", 3, 3.0, 3.0)]))
    assert os.stat(path).st_ino == inode  # same keys: appended, not rewritten

    sink.write(Batch(scalars=[("train/loss", 4, 4.0, 4.0), ("val/acc", 4, 0.9, 4.0)]))
    assert os.stat(path).st_ino != inode  # new key: a new file swapped in
    sink.write(Batch(scalars=[("train/loss", 5, 5.0, 5.0), ("val/acc", 5, 0.95, 5.0)]))
    sink.close(RESULT)

    assert leftovers(tmp_path) == []
    df = pd.read_csv(path)
    assert list(df.columns) == ["step", "wall_time", "train/loss", "val/acc"]
    assert df["train/loss"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert df["val/acc"].isna().tolist() == [True] * 4 + [False] * 2
    assert df["val/acc"].tolist()[4:] == [0.9, 0.95]
    assert all(len(r) == 4 for r in csv.reader(open(path, newline="")))


def test_failed_rewrite_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))
    before = (tmp_path / "metrics.csv").read_bytes()

    def disk_full(src, dst):  # failure injection: the swap never happens
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        sink.write(Batch(scalars=[("b", 1, 2.0, 2.0)]))
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert leftovers(tmp_path) == []

    monkeypatch.undo()  # the disk has room again: the sink goes on where it was
    sink.write(Batch(scalars=[("a", 1, 3.0, 3.0)]))
    sink.write(Batch(scalars=[("b", 2, 4.0, 4.0)]))
    sink.close(RESULT)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["step", "wall_time", "a", "b"]
    assert df["a"].tolist()[:2] == [1.0, 3.0] and df["b"].tolist()[2] == 4.0


def test_same_key_twice_at_one_step_starts_a_new_row(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[("loss", 5, 1.0, 1.0), ("acc", 5, 0.5, 1.0), ("loss", 5, 2.0, 2.0)]))
    sink.write(Batch(scalars=[("val/acc", 5, 0.7, 3.0)]))  # same step, a later batch
    sink.close(RESULT)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["step"].tolist() == [5, 5, 5]
    assert df["loss"].tolist()[:2] == [1.0, 2.0]  # nothing dropped
    merged = df.groupby("step").last()  # later value wins once merged
    assert merged.loc[5, "loss"] == 2.0 and merged.loc[5, "acc"] == 0.5
    assert merged.loc[5, "val/acc"] == 0.7


def test_rows_from_scalars_merges_by_step_and_sorts():
    rows = rows_from_scalars([("b", 2, 1.0, 5.0), ("a", 1, 2.0, 3.0), ("a", 2, 3.0, 4.0),
                              ("a", 1, 4.0, 6.0)])
    assert rows == [(1, 3.0, {"a": 2.0}), (1, 6.0, {"a": 4.0}), (2, 5.0, {"b": 1.0, "a": 3.0})]


def test_names_needing_quotes_and_names_of_fixed_columns(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    odd = 'weird, "name"\nwith newline'
    sink.write(Batch(scalars=[(odd, 0, 1.0, 1.0), ("step", 0, 7.0, 1.0)]))
    sink.write(Batch(scalars=[("later", 1, 2.0, 2.0)]))  # rewrite past a multi-line header
    sink.close(RESULT)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["step", "wall_time", odd, "step_", "later"]
    assert df["step"].tolist() == [0, 1] and df["step_"].tolist()[0] == 7.0
    assert df[odd].tolist()[0] == 1.0 and df["later"].tolist()[1] == 2.0


def test_path_argument(tmp_path):
    sink = CSVSink("sub/scalars.csv")  # relative to the run directory
    sink.open(run_info(tmp_path / "run"))
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))
    sink.close(RESULT)
    assert pd.read_csv(tmp_path / "run" / "sub" / "scalars.csv")["a"].tolist() == [1.0]

    target = tmp_path / "elsewhere.csv"
    target.write_text("stale\n")
    sink = CSVSink(target)  # absolute: used as is, replaced at open
    sink.open(run_info(tmp_path / "run"))
    sink.write(Batch(scalars=[("b", 0, 2.0, 1.0)]))
    sink.close(RESULT)
    assert pd.read_csv(target)["b"].tolist() == [2.0]


def test_many_rows_append_without_rewriting(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    keys = [f"k{i}" for i in range(20)]
    path = tmp_path / "metrics.csv"
    inode = None
    for start in range(0, 20_000, 500):
        sink.write(Batch(scalars=[(k, s, s * 0.5, float(s)) for s in range(start, start + 500)
                                  for k in keys]))
        inode = inode or os.stat(path).st_ino
        assert os.stat(path).st_ino == inode
    sink.close(RESULT)
    df = pd.read_csv(path)
    assert len(df) == 20_000 and df["k19"].iloc[-1] == 19_999 * 0.5


def test_a_run_writes_the_same_values_as_the_local_store(tmp_path):
    with autolog.run(project="p", dir=str(tmp_path), sinks=["local", "csv"], log_every=3) as run:
        for step in range(10):
            autolog.log({"train/loss": 1.0 / (step + 1)}, step=step)
            if step % 4 == 0:
                autolog.log({"val/acc": step / 10, "val/nan": math.nan}, step=step)
        run.flush(wait=True)  # everything handed off so far is in the file
        assert pd.read_csv(os.path.join(run.path, "metrics.csv"))["step"].max() == 9
        path = run.path
    data = autolog.read_run(path)
    rows = read_rows(os.path.join(path, "metrics.csv"))  # csv tells "nan" from an empty cell
    assert set(rows[0]) == {"step", "wall_time"} | set(data.metrics)
    for name, points in data.metrics.items():
        got = [(int(r["step"]), float(r[name])) for r in rows if r[name] != ""]
        assert len(got) == len(points)
        for (step, value), (want_step, want) in zip(got, points):
            assert step == want_step
            assert value == want or (math.isnan(value) and math.isnan(want))
