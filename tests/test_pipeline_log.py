"""The run's log comes first: written whatever `sinks=` says, never dropped, waited for past
`max_pending_mb`; writer failures cost one record; control data never reaches a sink."""
from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import torch

import autolog
from autolog.capture import nonfinite
from autolog.pipeline import writer as writer_mod
from autolog.store import log as store_log
from autolog.testing import MemorySink

run_module = sys.modules["autolog.core.run"]


def test_the_log_is_written_whatever_sinks_says(tmp_path):
    paths = []
    for sinks in ([], ["csv"], "console", ["local"]):
        with autolog.run(project="p", dir=str(tmp_path), sinks=sinks) as run:
            autolog.log({"a": 1.0, "b": 2.0})
        paths.append(run.path)
    for path in paths:
        assert autolog.read_run(path).metrics == {"a": [(0, 1.0)], "b": [(0, 2.0)]}
    assert sorted(r.path for r in autolog.list_runs(str(tmp_path))) == sorted(paths)


def test_training_waits_at_the_handoff_past_max_pending_mb(tmp_path, monkeypatch, capsys):
    """A stuck disk: hand-offs wait in memory, then the training thread waits; nothing lost."""
    gate, entered = threading.Event(), threading.Event()
    append = store_log.EventLog.append

    def slow_append(self, batch):
        entered.set()
        gate.wait()
        return append(self, batch)

    monkeypatch.setattr(store_log.EventLog, "append", slow_append)
    sink = MemorySink()
    run = autolog.run(dir=str(tmp_path), sinks=[sink], log_every=1, max_pending_mb=0.01)
    pipeline = run.pipeline

    def release_once_training_waits():
        entered.wait()
        with pipeline._cond:
            pipeline._cond.wait_for(lambda: pipeline.handoff_waits > 0)
        gate.set()

    releaser = threading.Thread(target=release_once_training_waits)
    releaser.start()
    for i in range(400):  # ~120 bytes a point: 0.01 MB is reached after ~90 hand-offs
        autolog.log("x", float(i))
    releaser.join()
    run.finish()
    data = autolog.read_run(run.path)
    assert [v for _, v in data.metrics["x"]] == [float(i) for i in range(400)]
    assert [v for _, v in sink.scalars("x")] == [float(i) for i in range(400)]
    assert data.meta["handoff_waits"]["count"] >= 1 and data.meta["handoff_waits"]["seconds"] >= 0
    assert capsys.readouterr().err.count("cannot keep up") == 1


def test_max_pending_mb_is_checked_at_the_call(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="max_pending_mb"):
        autolog.run(dir=str(tmp_path), max_pending_mb=0)


def _nan_training(steps: int = 4) -> None:
    model = torch.nn.Linear(3, 1)
    autolog.watch(model, log_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(steps):
        x = torch.ones(2, 3) * (float("nan") if i == 2 else 1.0)
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()


def test_a_failing_prepare_hook_never_leaks_internal_names(tmp_path, monkeypatch, capsys):
    def broken(self, batch):
        raise RuntimeError("prepare broke")

    monkeypatch.setattr(nonfinite.NonFiniteMonitor, "prepare", broken)
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with autolog.run(dir=str(tmp_path), sinks=[sink, "csv"], log_every=1) as run:
            _nan_training()
    data = autolog.read_run(run.path)
    internal = [n for n in set(data.metrics) | sink.names() if n.startswith("\x00") or "autolog/" in n]
    assert internal == [] and "train/loss" in data.metrics
    assert all(not m.kind.startswith("\x00") for m in sink.media())
    csv_text = open(f"{run.path}/metrics.csv", encoding="utf-8").read()
    assert "\x00" not in csv_text and "nonfinite" not in csv_text
    assert "prepare broke" in data.meta["capture_errors"]["nonfinite"]  # told, not leaked


def test_probes_travel_typed_and_still_find_the_bad_step(tmp_path):
    sink = MemorySink()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with autolog.run(dir=str(tmp_path), sinks=[sink], log_every=1) as run:
            _nan_training()
    data = autolog.read_run(run.path)
    assert data.meta["nonfinite"]["step"] == 2
    assert all(b.probes == [] and b.timing == [] for b in sink.batches)  # never seen by a sink


def test_a_media_file_that_cannot_be_written_costs_only_that_record(tmp_path, monkeypatch, capsys):
    store_media = run_module.Run._store_media

    def failing(self, record):
        if record.name == "bad":
            raise OSError(28, "No space left on device")
        return store_media(self, record)

    monkeypatch.setattr(run_module.Run, "_store_media", failing)
    sink = MemorySink()
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with autolog.run(dir=str(tmp_path), sinks=[sink], log_every=100) as run:
        for i in range(10):
            autolog.log("loss", float(i), step=i)
        autolog.log_image("bad", image, step=3)
        autolog.log_image("good", image, step=3)
    data = autolog.read_run(run.path)
    assert len(data.metrics["loss"]) == 10 and len(sink.scalars("loss")) == 10
    assert [m["name"] for m in data.media] == ["good"] and [m.name for m in sink.media()] == ["good"]
    assert data.status == "finished" and data.meta["writer_errors"]["count"] == 1
    assert "No space left" in data.meta["writer_errors"]["first_error"]
    assert capsys.readouterr().err.count("the writer could not handle a record") == 1


def test_a_value_that_fails_after_the_call_costs_only_itself(tmp_path):
    """Values that slipped past the call's checks (here put straight into the buffer)."""
    sink = MemorySink()
    with autolog.run(dir=str(tmp_path), sinks=[sink], log_every=100) as run:
        for i in range(10):
            autolog.log("loss", torch.tensor(float(i)), step=i)
        wall = 0.0
        run.buffer.scalar("meta", 3, torch.empty((), device="meta"), wall)
        run.buffer.scalar("huge_step", 2**63, 1.0, wall)
        run.buffer.scalar("text", 4, "not a number", wall)
        sparse = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([2.0]), (1,),
                                         check_invariants=True)
        run.buffer.scalar("sparse", 5, sparse, wall)  # in the same device group as the losses
        run.flush()  # never raises into the caller
    data = autolog.read_run(run.path)
    assert [v for _, v in data.metrics["loss"]] == [float(i) for i in range(10)]
    assert set(data.metrics) == {"loss"} and sink.names() == {"loss"}
    assert data.meta["dropped_values"] == 4


def test_a_sink_raising_on_every_write_costs_the_log_and_other_sinks_nothing(tmp_path):
    from autolog.testing import RaisingSink

    good = MemorySink()
    with autolog.run(dir=str(tmp_path), sinks=[RaisingSink(), good, RaisingSink(where=("write",))],
                     log_every=1) as run:
        for i in range(500):
            autolog.log("a", float(i))
    data = autolog.read_run(run.path)
    assert len(data.metrics["a"]) == 500 and len(good.scalars("a")) == 500
    assert "sinks_timed_out" not in data.meta
    assert data.meta["sink_errors"]["raising"]["errors"] >= 500


def test_default_max_pending_mb_is_documented():
    assert writer_mod.DEFAULT_MAX_PENDING_MB == 256.0
    assert "256" in autolog.track.__doc__


def test_a_follower_that_cannot_read_the_log_stops_alone(tmp_path, monkeypatch):
    """Failure injection: reading the log back breaks for the sink that fell behind."""
    from autolog.pipeline import follower

    def broken(path, start=0):
        raise OSError("log unreadable")
        yield  # pragma: no cover

    monkeypatch.setattr(follower, "read_batches", broken)
    monkeypatch.setattr(follower, "WINDOW_BATCHES", 0)  # every batch must come from the file
    behind = MemorySink()
    with autolog.run(dir=str(tmp_path), sinks=[behind], close_timeout=5) as run:
        autolog.log("a", 1.0)
    data = autolog.read_run(run.path)
    assert data.metrics["a"] == [(0, 1.0)] and behind.batches == []
    assert "log unreadable" in data.meta["sink_errors"]["memory"]["first_error"]
    assert data.meta["sinks_timed_out"] == ["memory"]  # left where it is, for autolog sync


def test_max_pending_mb_from_the_environment(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("AUTOLOG_MAX_PENDING_MB", "64")
    with autolog.run(dir=str(tmp_path)) as run:
        assert run.pipeline.max_pending == 64 * 2**20
    monkeypatch.setenv("AUTOLOG_MAX_PENDING_MB", "lots")
    with pytest.raises(ValueError, match="AUTOLOG_MAX_PENDING_MB"):
        autolog.run(dir=str(tmp_path))


def test_a_png_that_cannot_be_written_costs_only_the_image(tmp_path):
    """A real fault: the run's media/ is a file, so no PNG can be written there."""
    sink = MemorySink()
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with autolog.run(dir=str(tmp_path), sinks=[sink], log_every=100) as run:
        open(f"{run.path}/media", "w").close()
        for i in range(10):
            autolog.log("loss", float(i), step=i)
        autolog.log_image("sample", image, step=5)
        autolog.log_text("note", "still here", step=5)
    data = autolog.read_run(run.path)
    assert data.status == "finished"
    assert len(data.metrics["loss"]) == 10 and len(sink.scalars("loss")) == 10
    assert [m["name"] for m in data.media] == ["note"]  # the text is kept, the image is not indexed
    assert data.meta["store_errors"]  # told, not silent
