"""Run lifecycle: statuses, exceptions, signals, crashes, meta."""
import os
import signal
import subprocess
import sys

import pytest

import autolog
from tests.helpers import child, wait_line


class Boom(Exception):
    pass


def test_failed_run_reraises_the_same_exception_and_records_it(tmp_path):
    raised = Boom("exploded at step 3")

    @autolog.track(sinks=["local"])
    def train():
        autolog.log("a", 1.0)
        raise raised

    with pytest.raises(Boom) as info:
        train()
    assert info.value is raised
    frames = [f.name for f in __import__("traceback").extract_tb(info.value.__traceback__)]
    assert "train" in frames  # the original frames are still there
    [run] = autolog.list_runs()
    assert run.status == "failed"
    assert run.meta["exception_type"] == "Boom"
    assert run.meta["exception_message"] == "exploded at step 3"
    assert "raise raised" in run.meta["traceback"]
    assert run.metrics["a"] == [(0, 1.0)]  # nothing lost


def test_keyboard_interrupt_gives_interrupted(tmp_path):
    @autolog.track(sinks=["local"])
    def train():
        autolog.log("a", 1.0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train()
    [run] = autolog.list_runs()
    assert run.status == "interrupted" and run.metrics["a"] == [(0, 1.0)]


def test_context_manager_statuses(tmp_path):
    with pytest.raises(ValueError):
        with autolog.run(sinks=["local"], project="p") as run:
            raise ValueError("bad")
    assert autolog.read_run(run.path).status == "failed"
    with autolog.run(sinks=["local"], project="p") as run2:
        pass
    assert autolog.read_run(run2.path).status == "finished"


def test_meta_records_where_and_how(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("x")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "c"], cwd=tmp_path, check=True, env={**os.environ, **env})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "f.txt").write_text("changed")
    with autolog.run(sinks=["local"]) as run:
        pass
    meta = autolog.read_run(run.path).meta
    import torch
    assert meta["git_commit"] == commit and meta["git_dirty"] is True
    assert meta["pid"] == os.getpid() and meta["host"]
    assert meta["torch"] == torch.__version__ and meta["python"].count(".") == 2
    assert meta["duration"] >= 0 and meta["end_timestamp"] >= meta["start_timestamp"]
    assert meta["command"][0] == sys.executable


SCRIPT = """
    import os, signal, sys, autolog
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "handler":
        def handler(signum, frame):
            print("user handler", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, handler)

    @autolog.track(project="sig", sinks=["local"], flush_secs=3600)
    def train():
        for i in range(100):
            autolog.log("x", float(i), step=i)
        if autolog.current_run(): autolog.current_run().flush(wait=True)
        for i in range(100, 150):
            autolog.log("x", float(i), step=i)  # buffered only: the signal must save these too
        print("ready", flush=True)
        sys.stdin.readline()

    train()
"""


@pytest.mark.parametrize("sig,mode,status", [
    (signal.SIGTERM, "", "interrupted"),
    (signal.SIGTERM, "handler", "interrupted"),
    (signal.SIGINT, "", "interrupted"),
    (signal.SIGKILL, "", "crashed"),
])
def test_signals_keep_everything_and_the_process_behaves_as_without_autolog(tmp_path, sig, mode, status):
    def run_child(extra_env):
        proc = child(SCRIPT.replace("sys.argv[1] if len(sys.argv) > 1 else \"\"", repr(mode)), str(tmp_path), extra_env)
        wait_line(proc, "ready")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out

    disabled_code, _ = run_child({"AUTOLOG_MODE": "disabled"})
    code, out = run_child({})
    assert code == disabled_code  # same exit as the process would have had without autolog
    if mode == "handler":
        assert "user handler" in out and code == 7
    [run] = autolog.list_runs(project="sig")
    assert run.status == status
    expected = 100 if sig == signal.SIGKILL else 150  # a hard kill loses only what was not flushed
    assert run.metrics["x"] == [(i, float(i)) for i in range(expected)]


def test_writer_death_mid_write_reads_back_crashed_with_a_torn_record_skipped(tmp_path):
    with autolog.run(sinks=["local"], project="p") as run:
        autolog.log("a", 1.0, step=0)
        run.flush(wait=True)
        autolog.log("a", 2.0, step=1)
    events = os.path.join(run.path, "events.alog")
    data = open(events, "rb").read()
    with open(events, "ab") as fh:  # a record cut short by a crash
        fh.write(data[8:8 + 20])
    assert autolog.read_run(run.path).metrics["a"] == [(0, 1.0), (1, 2.0)]
    with open(events, "r+b") as fh:  # a corrupted last full record is dropped, the first kept
        fh.seek(len(data) - 3)
        fh.write(b"\xff\xff\xff")
    assert autolog.read_run(run.path).metrics["a"] == [(0, 1.0)]


def test_readable_while_running(tmp_path):
    with autolog.run(sinks=["local"], project="live", flush_secs=3600) as run:
        for i in range(10):
            autolog.log("a", i, step=i)
        assert run.flush(wait=True)
        live = autolog.read_run(run.path)
        assert live.status == "running"
        assert len(live.metrics["a"]) == 10
    assert autolog.read_run(run.path).status == "finished"


def test_uncaught_exception_outside_track_fails_the_open_run_and_prints_once(tmp_path):
    proc = child("""
        import sys
        before = sys.excepthook
        import autolog
        assert sys.excepthook is before  # importing autolog changes nothing
        run = autolog.run(project="top", sinks=["local"])
        autolog.log("a", 1.0)
        raise ValueError("boom at top level")
    """, str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.count("ValueError: boom at top level") == 1
    [run] = autolog.list_runs(project="top")
    assert run.status == "failed" and run.meta["exception_message"] == "boom at top level"
    assert run.metrics["a"] == [(0, 1.0)]


def test_a_run_left_open_finishes_at_exit(tmp_path):
    proc = child("""
        import autolog
        run = autolog.run(project="open", sinks=["local"])
        autolog.log("a", 2.0)
    """, str(tmp_path))
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    [run] = autolog.list_runs(project="open")
    assert run.status == "finished" and run.metrics["a"] == [(0, 2.0)]
