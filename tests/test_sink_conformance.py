"""One conformance suite over every built-in sink class and the test plug-in (tests/plugin_pkg):
open/write/close, write before open, a batch after close, pickling, rank > 0, catch-up from the
run's log. Each sink is read back with its own reader (CSV with pandas, TensorBoard with its
EventAccumulator, W&B from the offline .wandb file, the plug-in from its JSON lines)."""
from __future__ import annotations

import io
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import autolog
from autolog.pipeline import follower
from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult
from autolog.sinks.console import ConsoleSink
from autolog.sinks.csv import CSVSink
from autolog.sinks.local import LocalSink
from autolog.sinks.tensorboard import TensorBoardSink
from autolog.sinks.wandb import WandbSink
from autolog.store.log import read_batches
from helpers import read_csv

PLUGIN = Path(__file__).parent / "plugin_pkg"
RESULT = RunResult("finished", {"loss": 0.25}, {}, {})
POINTS = [("train/loss", s, 1.0 / (s + 1), 1000.0 + s) for s in range(6)]


def _recording_sink():
    if str(PLUGIN) not in sys.path:
        sys.path.insert(0, str(PLUGIN))
    from autolog_recording_sink import RecordingSink

    return RecordingSink()


# sink factory, reader of (step, value) for "train/loss" (None: the sink keeps no scalars)
def _read_csv(path):
    df = read_csv(os.path.join(path, "metrics.csv"))
    df = df[df["name"] == "train/loss"]
    return list(zip(df["step"].tolist(), df["value"].tolist()))


def _read_tensorboard(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(path, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("train/loss")]


def _read_wandb(path):
    import glob

    from autolog.sinks.wandb_records import read_wandb_run

    files = sorted({os.path.realpath(f) for f in glob.glob(os.path.join(path, "wandb", "*", "*.wandb"))})
    rows = [row for f in files for row in read_wandb_run(f).history if "train/loss" in row]
    return [(int(r["_step"]), r["train/loss"]) for r in rows]


def _read_local(path):
    return [(s, v) for batch, _end in read_batches(os.path.join(path, "events.alog"))
            for n, s, v, _w in batch.scalars if n == "train/loss"]


def _read_recording(path):
    file = os.path.join(path, "recording.jsonl")
    if not os.path.exists(file):
        return []
    lines = [json.loads(line) for line in open(file, encoding="utf-8")]
    return [(p[1], p[2]) for rec in lines if rec["event"] == "write" for p in rec["scalars"]
            if p[0] == "train/loss"]


SINKS = {
    "local": (LocalSink, _read_local),
    "csv": (CSVSink, _read_csv),
    "tensorboard": (TensorBoardSink, _read_tensorboard),
    "wandb": (WandbSink, _read_wandb),
    "console": (lambda: ConsoleSink(stream=io.StringIO(), progress=False), None),
    "recording": (_recording_sink, _read_recording),
}
WANT = [(s, v) for _n, s, v, _w in POINTS]


@pytest.fixture(params=list(SINKS))
def kind(request):
    return request.param


def _info(path, **kw) -> RunInfo:
    os.makedirs(path, exist_ok=True)
    return RunInfo(id="conf1", name="conf", project="p", path=str(path), config={"lr": 0.1},
                   meta={}, mode="offline", **kw)


def _batch() -> Batch:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    return Batch(scalars=list(POINTS), step=6,
                 histograms=[HistogramRecord("gradients/w", 2, [0.0, 1.0, 2.0], [3.0, 4.0], 1002.0)],
                 media=[MediaRecord("text", "note", 3, 1003.0, data="hello"),
                        MediaRecord("image", "img", 3, 1003.0, data=image, path=None)])


def _write_run(sink, path) -> None:
    """open, one batch of everything (scalars, a histogram, a text, an image), close."""
    sink.open(_info(path))
    sink.write(_batch())
    sink.close(RESULT)


def test_open_write_close(kind, tmp_path):
    make, read = SINKS[kind]
    _write_run(make(), tmp_path)
    if read is not None:
        assert read(str(tmp_path)) == WANT


def test_write_before_open_raises_nothing_or_a_clear_error_and_writes_nothing(kind, tmp_path):
    make, read = SINKS[kind]
    sink = make()
    try:
        sink.write(_batch())
    except RuntimeError as exc:  # the one allowed failure: a clear "before open"
        assert "open" in str(exc)
    assert os.listdir(tmp_path) == []
    sink.close(RESULT)  # close without open: nothing to do, no error
    assert os.listdir(tmp_path) == []


def test_a_batch_after_close_changes_nothing(kind, tmp_path):
    make, read = SINKS[kind]
    sink = make()
    _write_run(sink, tmp_path)
    try:
        sink.write(Batch(scalars=[("train/loss", 99, 9.0, 2000.0)], step=99))
    except RuntimeError as exc:
        assert "open" in str(exc) or "close" in str(exc)
    if read is not None:
        assert read(str(tmp_path)) == WANT  # the late point went nowhere


def test_pickles_before_open_and_works_after(kind, tmp_path):
    make, read = SINKS[kind]
    _write_run(pickle.loads(pickle.dumps(make())), tmp_path)
    if read is not None:
        assert read(str(tmp_path)) == WANT


def test_options_rebuild_an_equivalent_sink(kind):
    make, _read = SINKS[kind]
    sink = make()
    spec = follower.sink_spec(sink)
    if spec["options"] is None:  # options that are not JSON (the console's stream)
        assert kind == "console" and spec["syncable"] is False
        return
    again = follower.build_sink(spec)
    assert type(again) is type(sink) and again.options() == sink.options()


def test_rank_other_than_zero_opens_no_sink_and_writes_nothing(kind, tmp_path, monkeypatch):
    make, _read = SINKS[kind]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sink = make()
    with autolog.run(dir=str(tmp_path / "runs"), sinks=[sink]) as run:
        autolog.log("train/loss", 1.0)
        assert run.is_follower
    assert os.listdir(tmp_path) == []  # no run directory, no sink output anywhere


@pytest.mark.parametrize("follower_kind", [k for k in SINKS if k != "local"])  # local: the log
def test_catch_up_from_the_log(follower_kind, tmp_path, monkeypatch):
    """With no memory window at all every record reaches the sink from events.alog."""
    make, read = SINKS[follower_kind]
    monkeypatch.setattr(follower, "WINDOW_BATCHES", 0)
    with autolog.run(project="p", dir=str(tmp_path), sinks=[make()], log_every=2,
                     mode="offline") as run:
        for s in range(6):
            autolog.log("train/loss", 1.0 / (s + 1), step=s)
            if s % 2:
                run.flush()
    [f] = run.pipeline.followers
    assert f.from_log >= 3 and f.done
    if read is not None:
        assert read(run.path) == WANT


def test_existing_output_is_told_by_the_sinks_that_would_duplicate(kind, tmp_path):
    make, _read = SINKS[kind]
    sink = make()
    assert sink.existing_output(_info(tmp_path)) is None  # nothing written yet
    _write_run(sink, tmp_path)
    told = make().existing_output(_info(tmp_path))
    if kind in ("tensorboard", "wandb"):  # a second copy would show every point twice
        assert isinstance(told, str) and "--force" in told
    else:  # CSV is rewritten, the others append or print
        assert told is None
