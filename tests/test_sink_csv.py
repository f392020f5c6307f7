"""CSVSink: driven with hand-made records, read back with `csv` and pandas (long format)."""
from __future__ import annotations

import csv
import math
import os


import autolog
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import resolve_sink
from autolog.sinks.csv import COLUMNS, CSVSink
from helpers import read_csv

RESULT = RunResult("finished", {}, {}, {})


def run_info(path, resumed=False) -> RunInfo:
    return RunInfo(id="r1", name="r1", project="p", path=str(path), config={}, meta={}, resumed=resumed)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_registered_by_name():
    sink = resolve_sink("csv")
    assert isinstance(sink, CSVSink) and sink.name == "csv"


def test_one_row_per_point_read_back_by_csv_and_pandas(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[
        ("train/loss", 0, 0.1 + 0.2, 100.0), ("optim/lr", 0, 1e-3, 100.5),
        ("train/loss", 1, 1 / 3, 101.0), ("optim/lr", 1, 9e-4, 101.25),
    ], step=2))
    sink.close(RESULT)
    path = tmp_path / "metrics.csv"
    rows = read_rows(path)
    assert list(rows[0]) == list(COLUMNS) == ["step", "wall_time", "name", "value"]
    assert [(r["step"], r["name"], float(r["value"])) for r in rows] == [
        ("0", "train/loss", 0.1 + 0.2), ("0", "optim/lr", 1e-3), ("1", "train/loss", 1 / 3),
        ("1", "optim/lr", 9e-4)]  # exact round trip, log order
    frame = read_csv(path)
    wide = frame.pivot_table(index="step", columns="name", values="value", aggfunc="last")
    assert wide["train/loss"].tolist() == [0.1 + 0.2, 1 / 3]
    assert wide["optim/lr"].tolist() == [1e-3, 9e-4]


def test_rows_visible_after_each_batch_before_close(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    assert (tmp_path / "metrics.csv").read_text() == "step,wall_time,name,value\n"
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))
    sink.write(Batch(scalars=[("b", 1, 2.0, 2.0)]))  # a new name: appended, nothing rewritten
    assert [(r["name"], r["value"]) for r in read_rows(tmp_path / "metrics.csv")] == [("a", "1.0"), ("b", "2.0")]
    sink.close(RESULT)


def test_nan_and_inf_read_back_as_floats(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[("x", 0, math.nan, 1.0), ("x", 1, math.inf, 2.0),
                              ("x", 2, -math.inf, 3.0), ("x", 3, 0.5, 4.0)]))
    sink.close(RESULT)
    values = read_csv(tmp_path / "metrics.csv")["value"].tolist()
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 0.5]


def test_names_needing_quotes(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    odd = 'weird, "name"\nwith newline'
    sink.write(Batch(scalars=[(odd, 0, 1.0, 1.0), ("step", 0, 7.0, 1.0)]))
    sink.close(RESULT)
    df = read_csv(tmp_path / "metrics.csv")
    assert df["name"].tolist() == [odd, "step"] and df["value"].tolist() == [1.0, 7.0]


def test_path_argument_and_replace_at_open(tmp_path):
    sink = CSVSink("sub/scalars.csv")  # relative to the run directory
    sink.open(run_info(tmp_path / "run"))
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))
    sink.close(RESULT)
    frame = read_csv(tmp_path / "run" / "sub" / "scalars.csv")
    assert frame["value"].tolist() == [1.0]
    target = tmp_path / "elsewhere.csv"
    target.write_text("stale\n")
    sink = CSVSink(target)  # absolute: used as is, replaced at open
    sink.open(run_info(tmp_path / "run"))
    sink.write(Batch(scalars=[("b", 0, 2.0, 1.0)]))
    sink.close(RESULT)
    assert read_csv(target)["name"].tolist() == ["b"]


def test_resumed_sink_appends_to_its_earlier_file(tmp_path):
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    sink.write(Batch(scalars=[("a", 0, 1.0, 1.0)]))  # then the process "times out" (no close)
    again = CSVSink()
    again.open(run_info(tmp_path, resumed=True))
    again.write(Batch(scalars=[("a", 1, 2.0, 2.0)]))
    again.close(RESULT)
    assert read_csv(tmp_path / "metrics.csv")["value"].tolist() == [1.0, 2.0]


def test_100k_names_are_linear(tmp_path):
    """100,000 names (one batch, then one name per batch) write in one pass each: no rewrite."""
    sink = CSVSink()
    sink.open(run_info(tmp_path))
    path = tmp_path / "metrics.csv"
    inode = os.stat(path).st_ino
    sink.write(Batch(scalars=[(f"layer{i}/norm", 0, float(i), 1.0) for i in range(100_000)]))
    for i in range(2_000):
        sink.write(Batch(scalars=[(f"new{i}", 1, 1.0, 2.0)]))
    assert os.stat(path).st_ino == inode  # never swapped for a rewritten file
    sink.close(RESULT)
    df = read_csv(path)
    assert len(df) == 102_000 and df["name"].nunique() == 102_000
    assert df["value"].iloc[99_999] == 99_999.0


def test_a_run_writes_the_same_values_as_the_local_store(tmp_path):
    with autolog.run(project="p", dir=str(tmp_path), sinks=["local", "csv"], log_every=3) as run:
        for step in range(10):
            autolog.log({"train/loss": 1.0 / (step + 1)}, step=step)
            if step % 4 == 0:
                autolog.log({"val/acc": step / 10, "val/nan": math.nan}, step=step)
        run.flush(wait=True)  # everything handed off so far is in the file
        frame = read_csv(os.path.join(run.path, "metrics.csv"))
        assert frame["step"].max() == 9
        path = run.path
    data = autolog.read_run(path)
    rows = read_rows(os.path.join(path, "metrics.csv"))
    assert {r["name"] for r in rows} == set(data.metrics)
    for name, points in data.metrics.items():
        got = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == name]
        assert len(got) == len(points)
        for (step, value), (want_step, want) in zip(got, points):
            assert step == want_step
            assert value == want or (math.isnan(value) and math.isnan(want))


def test_options_rebuild_the_sink():
    sink = CSVSink("x/metrics.csv")
    assert sink.options() == {"path": "x/metrics.csv"}
    assert CSVSink(**sink.options()).path_arg == "x/metrics.csv"


def test_a_run_with_100k_names_writes_them_all_before_close_timeout(tmp_path):
    """The issue's reproduction: 100,000 names once took the CSV past the 30 s close_timeout."""
    names = [f"layer{i}/grad_norm" for i in range(100_000)]
    with autolog.run(dir=str(tmp_path), sinks=["csv"], close_timeout=30) as run:
        autolog.log(dict.fromkeys(names, 0.5), step=0)
        autolog.log(dict.fromkeys(names[:1000], 0.25), step=1)
    data = autolog.read_run(run.path)
    assert "sinks_timed_out" not in data.meta
    df = read_csv(os.path.join(run.path, "metrics.csv"))
    assert len(df) == 101_000 and df["name"].iloc[:100_000].tolist() == names
