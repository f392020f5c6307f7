"""The record pipeline: hand-offs, failing and stalling sinks, forks."""
import multiprocessing
import os
import sys

import torch

import autolog
from autolog.testing import MemorySink, RaisingSink, StallingSink

run_module = sys.modules["autolog.core.run"]


def test_handoff_every_log_every_steps_and_at_the_end(tmp_path):
    sink = MemorySink()
    with autolog.run(sinks=[sink], log_every=5, flush_secs=3600) as run:
        for i in range(12):
            autolog.log("a", i)  # no optimizer: each repeat is a new step
        assert run.flush(wait=True)
        handed = [b.step for b in sink.batches]
    assert handed[:2] == [5, 10]  # a hand-off each time the step reaches a multiple of 5
    assert [v for _, v in sink.scalars("a")] == [float(i) for i in range(12)]
    assert sink.result.status == "finished"


def test_time_bound_triggers_a_handoff_at_the_next_capture_call(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(run_module.time, "monotonic", lambda: clock[0])
    sink = MemorySink()
    with autolog.run(sinks=[sink], log_every=10_000, flush_secs=2.0) as run:
        autolog.log("a", 1.0)
        assert run.flush_count == 0
        clock[0] += 2.5
        autolog.log("b", 2.0)  # the time bound has passed: this call hands off
        assert run.flush_count == 1
        run.flush(wait=True)
        assert sink.names() == {"a", "b"}


def test_a_raising_sink_is_reported_once_and_isolated(tmp_path, capsys):
    bad, good = RaisingSink(where=("write", "close")), MemorySink()
    with autolog.run(sinks=["local", bad, good], log_every=2) as run:
        for i in range(10):
            autolog.log("a", i)
    assert bad.calls >= 5  # it kept being called (and kept failing), nothing else noticed
    assert [v for _, v in good.scalars("a")] == [float(i) for i in range(10)]
    data = autolog.read_run(run.path)
    assert data.status == "finished" and len(data.metrics["a"]) == 10
    err = capsys.readouterr().err
    assert err.count("sink 'raising' failed") == 1
    assert data.meta["sink_errors"]["raising"]["errors"] == bad.calls - 1  # open() succeeded
    assert "injected failure in write" in data.meta["sink_errors"]["raising"]["first_error"]


def test_a_sink_failing_to_open_gets_nothing_else(tmp_path):
    bad = RaisingSink(where=("open",))
    with autolog.run(sinks=["local", bad]) as run:
        autolog.log("a", 1)
    assert bad.calls == 1
    assert autolog.read_run(run.path).metrics["a"] == [(0, 1.0)]


def test_a_stalled_sink_neither_blocks_training_nor_the_other_sinks(tmp_path, monkeypatch):
    from autolog.pipeline import follower

    monkeypatch.setattr(follower, "WINDOW_BATCHES", 4)  # a small window: it must fall behind
    stall, good = StallingSink(), MemorySink()
    run = autolog.run(sinks=["local", stall, good], log_every=1, close_timeout=0.5)
    try:
        for i in range(50):  # 50 hand-offs, far beyond the stalled sink's window of 4
            autolog.log("a", i)
        assert stall.entered.wait(30)
        assert run.flush(wait=True, timeout=0.2) is False  # the stalled sink can't catch up
        [stalled] = [f for f in run.pipeline.followers if f.sink is stall]
        assert len(stalled.window) <= 4  # memory bounded by its window, the rest is in the log
    finally:
        run.finish()
        stall.release()
    data = autolog.read_run(run.path)
    assert data.status == "finished" and len(data.metrics["a"]) == 50
    assert [v for _, v in good.scalars("a")] == [float(i) for i in range(50)]
    assert data.meta["sinks_timed_out"] == ["stalling"]  # named, the others finished
    positions = {e["name"]: e for e in autolog.pipeline.follower.Positions.load(run.path).entries}
    assert positions["memory"]["done"] is True and positions["stalling"]["done"] is False


def _child_logs(queue):
    try:
        autolog.log("from_child", 1.0)
        run = autolog.current_run()
        queue.put(("ok", run is None))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(exc)))


class _LoggingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        autolog.log("in_worker", float(i))  # inside a forked DataLoader worker: must be inert
        return torch.tensor([float(i)])


def test_forked_children_neither_write_nor_deadlock(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with autolog.run(sinks=["local"], log_every=1) as run:
        autolog.log("parent", 1.0)
        run.buffer._lock.acquire()  # a lock held at fork time must not deadlock the child
        try:
            queue = ctx.Queue()
            proc = ctx.Process(target=_child_logs, args=(queue,))
            proc.start()
        finally:
            run.buffer._lock.release()
        assert queue.get(timeout=60) == ("ok", True)
        proc.join(60)
        assert proc.exitcode == 0
        loader = torch.utils.data.DataLoader(_LoggingDataset(), batch_size=8, num_workers=2,
                                             multiprocessing_context="fork")
        total = sum(float(b.sum()) for b in loader)
        autolog.log("parent", 2.0)
    assert total == sum(range(32))
    data = autolog.read_run(run.path)
    assert set(data.metrics) == {"parent"} and data.status == "finished"
    assert sorted(os.listdir(os.path.dirname(run.path))) == [run.id]


def test_testing_fixture_gives_an_open_run_with_a_memory_sink(autolog_run):
    assert autolog.current_run() is autolog_run
    autolog.log("x", 1.0)
    autolog_run.flush(wait=True)
    assert autolog_run.sink.scalars("x") == [(0, 1.0)]
    assert autolog_run.sink.info.id == autolog_run.id


def test_the_writer_rests_between_writes_and_a_waiter_cuts_the_rest_short(tmp_path, monkeypatch):
    """Hand-offs made while the writer rests (WRITER_REST_SECS) wait in memory and are written
    together; flush(wait=...) does not wait for the rest to end."""
    writer = sys.modules["autolog.pipeline.writer"]
    monkeypatch.setattr(writer, "WRITER_REST_SECS", 3600.0)
    with autolog.run(sinks=["local"], log_every=10_000, flush_secs=3600) as run:
        autolog.log("a", 0.0)
        assert run.flush(wait="log")  # written; the writer now rests for an hour
        for i in range(1, 4):
            autolog.log("a", float(i))
            run.flush()  # handed off, not waited for
        assert run.pipeline.writer_time["handoffs"] == 1  # the three are still in memory
        assert run.flush(wait="log")  # a waiter: the writer goes on at once
        assert run.pipeline.writer_time["handoffs"] == 4
        assert [v for _s, v in autolog.read_run(run.path).metrics["a"]] == [0.0, 1.0, 2.0, 3.0]
