"""The pipeline's faults reproduced with real files and processes: a slow disk (fsync taking
0.3 s, in a child process), a sink that stalls forever (a W&B sink that never opens) and one
that raises on every write, 20k steps at log_every=1. Every point handed off is in the store,
and after `autolog sync` in every sink, exactly once: TensorBoard (EventAccumulator), W&B
(the offline .wandb files read back), CSV."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

import autolog
from autolog.tools import cli
from helpers import read_csv

STEPS = 20_000

CHILD = """
import os, sys, time
real_fsync = os.fsync
def slow_fsync(fd):  # an NFS or a busy disk
    time.sleep(0.3)
    real_fsync(fd)
os.fsync = slow_fsync

import autolog
from autolog.testing import RaisingSink, StallingSink

sinks = ["local", "csv", "tensorboard", RaisingSink(where=("write",)),
         StallingSink(pid=os.getpid(), inner="wandb")]  # stalls forever, in this process only
with autolog.run(project="faults", dir=sys.argv[1], sinks=sinks, log_every=1, flush_secs=3600,
                 close_timeout=2) as run:
    for i in range(int(sys.argv[2])):
        autolog.log({"train/loss": 1.0 / (i + 1), "lr": 0.001})  # a repeated key: a new step
print(run.path)
"""


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root)}
    env.pop("AUTOLOG_SINKS", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(root), str(STEPS)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1], done.stderr


def _wandb_series(path: str, name: str) -> list[tuple[int, float]]:
    from autolog.sinks.wandb_records import read_wandb_run

    points = []
    files = {os.path.realpath(f) for f in glob.glob(os.path.join(path, "wandb", "*", "*.wandb"))}
    for file in sorted(files):  # (latest-run is a link to one of them)
        for row in read_wandb_run(file).history:
            if name in row:
                points.append((int(row["_step"]), float(row[name])))
    return sorted(points)


def test_every_point_is_in_the_store_despite_slow_disk_stall_and_raise(faulty_run):
    path, stderr = faulty_run
    data = autolog.read_run(path)
    assert data.status == "finished"
    assert data.metrics["train/loss"] == [(i, 1.0 / (i + 1)) for i in range(STEPS)]
    assert len(data.metrics["lr"]) == STEPS
    assert "stalling" in data.meta["sinks_timed_out"]
    assert data.meta["sink_errors"]["raising"]["errors"] >= 1
    assert stderr.count("sink 'raising' failed") == 1  # told once
    entries = {e["name"]: e for e in json.load(open(os.path.join(path, "sinks.json")))["sinks"]}
    assert entries["stalling"]["done"] is False  # left where it stopped: far behind the log
    assert entries["stalling"]["offset"] < os.path.getsize(os.path.join(path, "events.alog")) // 2


def test_autolog_sync_finishes_every_sink_exactly(faulty_run, monkeypatch, tmp_path, capsys):
    path, _ = faulty_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli.main(["sync", path])  # 1 if the raising sink was still behind (it raises again)
    out = capsys.readouterr().out
    assert "stalling" in out and "ok" in out.split("stalling", 1)[1].splitlines()[0]
    entries = {e["name"]: e for e in json.load(open(os.path.join(path, "sinks.json")))["sinks"]}
    assert all(entries[n]["done"] for n in ("csv", "tensorboard", "stalling")), ({n: (e["offset"], e["done"]) for n, e in entries.items()}, out)
    want = [(i, 1.0 / (i + 1)) for i in range(STEPS)]

    frame = read_csv(os.path.join(path, "metrics.csv"))
    loss = frame[frame["name"] == "train/loss"]
    assert list(zip(loss["step"], loss["value"])) == want  # exactly once, in order

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(path, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(STEPS))
    assert [e.value for e in events] == pytest.approx([v for _, v in want], rel=1e-6)

    assert _wandb_series(path, "train/loss") == want  # the stalled W&B sink, finished by sync

    cli.main(["sync", path])  # a second sync has nothing left to do
    assert "nothing to sync" in capsys.readouterr().out or "raising" in open(
        os.path.join(path, "sinks.json")).read()


KILLED = """
import sys
import autolog
run = autolog.run(project="killed", dir=sys.argv[1], sinks=["csv", "tensorboard"], log_every=7,
                  flush_secs=3600)
for i in range(1000):
    autolog.log({"train/loss": float(i)})
assert run.flush(wait=True)  # every sink has it all, and sinks.json says so
print(run.path, flush=True)
sys.stdin.read()  # until the parent kills us
"""


def test_sync_after_kill_9_finishes_the_sinks_exactly(tmp_path, capsys):
    from helpers import child

    proc = child(KILLED.replace("sys.argv[1]", repr(str(tmp_path))), cwd=str(tmp_path))
    path = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(60)
    data = autolog.read_run(path)
    assert data.status == "crashed"
    want = [(i, float(i)) for i in range(1000)]
    assert data.metrics["train/loss"] == want
    entries = {e["name"]: e for e in json.load(open(os.path.join(path, "sinks.json")))["sinks"]}
    assert not entries["csv"]["done"] and entries["csv"]["offset"] > 0
    assert cli.main(["sync", path]) == 0
    frame = read_csv(os.path.join(path, "metrics.csv"))
    assert list(zip(frame["step"], frame["value"])) == want  # nothing twice, nothing missing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(path, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == want
    assert cli.main(["sync", path]) == 0 and "nothing to sync" in capsys.readouterr().out
