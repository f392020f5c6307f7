"""`autolog sync`: what it finishes, what it skips, what it refuses, in-process."""
from __future__ import annotations

import json
import os


import autolog
from autolog.sinks.console import ConsoleSink
from autolog.testing import StallingSink
from autolog.tools import cli
from helpers import read_csv


class _Local(autolog.sinks.Sink):  # module level: importable, so `sync` can rebuild it
    pass


def _stalled_run(tmp_path, *extra):
    """A run whose CSV sink (wrapped in a StallingSink stalling in this process) times out."""
    stall = StallingSink(pid=os.getpid(), inner="csv")
    run = autolog.run(dir=str(tmp_path), sinks=[stall, *extra], log_every=1, close_timeout=0.2)
    for i in range(20):
        autolog.log("a", float(i))
    run.finish()
    return run, stall


def _entries(path):
    return {e["name"]: e for e in json.load(open(os.path.join(path, "sinks.json")))["sinks"]}


def test_sync_finishes_a_timed_out_sink_and_skips_the_console(tmp_path, capsys, monkeypatch):
    import io

    run, stall = _stalled_run(tmp_path, ConsoleSink(stream=io.StringIO(), progress=False))
    try:
        data = autolog.read_run(run.path)
        assert data.meta["sinks_timed_out"] == ["stalling"]
        monkeypatch.setattr(os, "getpid", lambda: -1)  # "another process": it no longer stalls
        assert cli.main(["sync", run.path]) == 0
        out = capsys.readouterr().out
        assert "stalling" in out and "console" not in out
        frame = read_csv(os.path.join(run.path, "metrics.csv"))
        assert frame["value"].tolist() == [float(i) for i in range(20)]
        assert _entries(run.path)["stalling"]["done"] is True
    finally:
        stall.release()


def test_sync_reports_a_sink_it_cannot_rebuild(tmp_path, capsys):
    run, stall = _stalled_run(tmp_path)
    try:
        entries = json.load(open(os.path.join(run.path, "sinks.json")))
        entries["sinks"][0]["options"] = None  # as for a sink built with a non-JSON argument
        json.dump(entries, open(os.path.join(run.path, "sinks.json"), "w"))
        assert cli.main(["sync", run.path]) == 1
        assert "cannot rebuild it" in capsys.readouterr().out
    finally:
        stall.release()


def test_sync_refuses_a_run_still_being_written(tmp_path, capsys):
    with autolog.run(dir=str(tmp_path), sinks=["csv"]) as run:
        autolog.log("a", 1.0)
        assert cli.main(["sync", run.path]) == 1
        assert "still being written" in capsys.readouterr().out


def test_sync_of_a_run_whose_sinks_finished_has_nothing_to_do(tmp_path, capsys):
    with autolog.run(dir=str(tmp_path), sinks=["csv"]) as run:
        autolog.log("a", 1.0)
    assert cli.main(["sync", run.path]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    assert read_csv(os.path.join(run.path, "metrics.csv"))["value"].tolist() == [1.0]


def test_a_class_defined_in_a_function_cannot_be_rebuilt():
    import pytest

    from autolog.pipeline.follower import build_sink, sink_spec

    class Inner(autolog.sinks.Sink):
        pass

    with pytest.raises((TypeError, AttributeError)):
        build_sink(sink_spec(Inner()))
    assert type(build_sink(sink_spec(_Local()))) is _Local  # importable: rebuilt


def test_sync_opens_each_sink_in_the_mode_it_had_live(tmp_path, monkeypatch):
    from autolog.testing import MemorySink

    seen = []
    monkeypatch.setattr(MemorySink, "open", lambda self, run: seen.append((run.mode, run.resumed)))
    stall = StallingSink(pid=os.getpid(), inner="csv")
    run = autolog.run(dir=str(tmp_path), sinks=[stall], mode="offline", close_timeout=0.2)
    autolog.log("a", 1.0)
    run.finish()
    try:
        assert _entries(run.path)["stalling"]["mode"] == "offline"
        entries = json.load(open(os.path.join(run.path, "sinks.json")))
        entries["sinks"][0]["class"] = "autolog.testing:MemorySink"  # stands in for a W&B sink
        entries["sinks"][0]["options"] = {}
        json.dump(entries, open(os.path.join(run.path, "sinks.json"), "w"))
        assert cli.main(["sync", run.path]) == 0
        assert seen == [("offline", True)]  # never online because sync ran without WANDB_MODE
    finally:
        stall.release()
