"""Resuming a run in a plain loop: ``autolog.run(resume=RUN, resume_step=N)`` continues the stored
run (same id and directory, attempts recorded), and the run reads back as one run whose steps line
up with an uninterrupted twin -- after an exception, and after a real SIGKILL of the writing
process."""
from __future__ import annotations

import copy
import glob
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import autolog

STEPS = 12


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)  # the data of a step depends on the step only
    x = torch.randn(8, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]])


def _train(run_options: dict, start: int = 0, stop: int = STEPS, state: dict | None = None,
           fail_at: int | None = None, checkpoint_at: int | None = None, saved: dict | None = None):
    """Train steps start..stop-1 (from checkpoint `state` when given); the checkpoint taken after
    `checkpoint_at` steps goes into `saved`. Returns the run."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    with autolog.run(**{"project": "resume", "sinks": ["local"], "log_every": 3, **run_options}) as run:
        for step in range(start, stop):
            if step == fail_at:
                raise RuntimeError(f"failed at {step}")
            x, y = _batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            autolog.log({"seen": float(step)})  # before the optimizer step: at this step
            opt.step()
            if step + 1 == checkpoint_at:
                saved.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()))
    return run


def test_a_failed_run_resumed_from_its_checkpoint_reads_back_as_one_uninterrupted_run(tmp_path):
    reference = autolog.read_run(_train({"dir": tmp_path / "twin"}).path)
    checkpoint: dict = {}
    with pytest.raises(RuntimeError):
        _train({"dir": tmp_path / "runs", "config": {"lr": 0.05}}, fail_at=9, checkpoint_at=6, saved=checkpoint)
    (failed,) = autolog.list_runs(tmp_path / "runs")
    assert failed.status == "failed"
    run = _train({"dir": tmp_path / "runs", "resume": "last", "resume_step": 6, "config": {"batch": 8}},
                 start=6, state=checkpoint)
    assert run.id == failed.id and run.path == failed.path
    data = autolog.read_run(run.path, attempts=True)
    assert data.status == "finished" and len(autolog.list_runs(tmp_path / "runs")) == 1
    for name in ("train/loss", "optim/lr", "seen"):
        assert data.metrics[name] == reference.metrics[name], name  # steps and values line up
    assert [s for s, _ in data.metrics["train/loss"]] == list(range(STEPS))
    assert data.config["lr"] == 0.05 and data.config["batch"] == 8  # merged
    first, second = data.meta["attempts"]
    assert first["status"] == "failed" and first["exception_type"] == "RuntimeError" and first["step"] == 9
    assert second["status"] == "finished" and second["resume_step"] == 6 and second["step_start"] == 6
    assert second["step"] == STEPS and second["pid"] == os.getpid() and second["end_time"]
    assert data.meta["start_time"] == first["start_time"]  # the run began with its first attempt
    assert "exception_type" not in data.meta  # that was the first attempt's
    # what the first attempt stored from step 6 on is superseded, and still readable
    a0, a1 = data.attempts
    assert a0.superseded["train/loss"] == [p for p in a0.metrics["train/loss"] if p[0] >= 6]
    assert [s for s, _ in a0.superseded["train/loss"]] == [6, 7, 8]
    assert a0.superseded["seen"] == [(6, 6.0), (7, 7.0), (8, 8.0)]
    assert a1.superseded == {} and [s for s, _ in a1.metrics["train/loss"]] == list(range(6, STEPS))
    assert autolog.read_run(run.path).attempts is None


_CHILD = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
import autolog
from test_resume import _batch
root, phase = sys.argv[1], sys.argv[2]
ckpt = os.path.join(root, "ckpt.pt")
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
options = dict(project="resume", dir=os.path.join(root, "runs"), sinks=["local"], log_every=3)
start = 0
if phase == "resume":
    saved = torch.load(ckpt)
    model.load_state_dict(saved["model"]); opt.load_state_dict(saved["opt"]); start = saved["step"]
    options.update(resume="last", resume_step=start)
run = autolog.run(**options)
for step in range(start, {steps}):
    x, y = _batch(step)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward()
    autolog.log({{"seen": float(step)}})
    opt.step()
    if phase == "first" and step + 1 == 8:
        torch.save({{"model": model.state_dict(), "opt": opt.state_dict(), "step": 8}}, ckpt)
        run.flush(wait="log")  # what the checkpoint covers is in the log
    if phase == "first" and step + 1 == 10:
        run.flush(wait="log")  # points past the checkpoint are stored too: the resume supersedes them
        os.kill(os.getpid(), signal.SIGKILL)
run.finish()
"""


def test_a_sigkilled_run_resumed_from_its_checkpoint_is_one_run_with_contiguous_steps(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD.format(tests=os.path.dirname(__file__), steps=STEPS)))
    first = subprocess.run([sys.executable, str(script), str(tmp_path), "first"], capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    (crashed,) = autolog.list_runs(tmp_path / "runs")
    assert crashed.status == "crashed"
    second = subprocess.run([sys.executable, str(script), str(tmp_path), "resume"], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    reference = autolog.read_run(_train({"dir": tmp_path / "twin"}).path)
    (run,) = autolog.list_runs(tmp_path / "runs")
    assert run.id == crashed.id and run.status == "finished"
    for name in ("train/loss", "seen", "optim/lr"):
        steps = [s for s, _ in run.metrics[name]]
        assert steps == sorted(set(steps)), name  # no duplicates
        assert run.metrics[name] == reference.metrics[name], name  # contiguous, and the same numbers
    first_attempt, second_attempt = run.meta["attempts"]
    assert first_attempt["status"] == "crashed" and first_attempt["step"] == 10 and first_attempt["end_time"]
    assert second_attempt["resume_step"] == 8 and second_attempt["status"] == "finished"
    superseded = autolog.read_run(run.path, attempts=True).attempts[0].superseded
    assert [s for s, _ in superseded["train/loss"]] == [8, 9] and [s for s, _ in superseded["seen"]] == [8, 9]


def _finished_run(tmp_path, name=None, project="resume", steps=2):
    with autolog.run(project=project, dir=tmp_path, sinks=["local"], name=name) as run:
        for i in range(steps):
            autolog.log({"x": float(i)}, step=i)
    return run


def test_resume_by_id_prefix_name_or_directory_and_without_resume_step(tmp_path):
    original = _finished_run(tmp_path, name="alpha")
    for ref in (original.id, original.id[:18], "alpha", original.path, os.path.relpath(original.path)):
        with autolog.run(project="resume", dir=tmp_path, sinks=["local"], resume=ref) as run:
            assert run.id == original.id
    data = autolog.read_run(original.path)
    assert len(data.meta["attempts"]) == 6
    assert [a["status"] for a in data.meta["attempts"]] == ["finished"] * 6
    assert data.metrics["x"] == [(0, 0.0), (1, 1.0)]  # nothing superseded without resume_step
    with autolog.run(project="resume", dir=tmp_path, sinks=["local"], resume="alpha") as run:
        assert run.step == 0  # the run had no optimizer: it had not stepped
        autolog.log({"y": 1.0})
    assert autolog.read_run(original.path).metrics["x"] == [(0, 0.0), (1, 1.0)]


def test_resume_last_takes_the_newest_unfinished_run_of_the_project_else_starts_one(tmp_path):
    with pytest.raises(RuntimeError):
        with autolog.run(project="resume", dir=tmp_path, sinks=["local"]):
            raise RuntimeError("x")
    (failed,) = autolog.list_runs(tmp_path)
    _finished_run(tmp_path)  # newer, but finished
    _finished_run(tmp_path, project="other")
    with autolog.run(project="resume", dir=tmp_path, sinks=["local"], resume="last") as run:
        assert run.id == failed.id
    with autolog.run(project="resume", dir=tmp_path, sinks=["local"], resume="last") as run:
        pass  # every run of the project is finished now: a new run
    assert run.id not in (r.id for r in autolog.list_runs(tmp_path) if r.id == failed.id) and len(
        autolog.list_runs(tmp_path, "resume")) == 3


def test_bad_resume_references_are_clear_errors(tmp_path):
    _finished_run(tmp_path, name="same")
    _finished_run(tmp_path, name="same")
    with pytest.raises(ValueError, match="resume: 'same' matches 2 runs"):
        autolog.run(dir=tmp_path, sinks=["local"], resume="same")
    with pytest.raises(ValueError, match="resume: no run 'nope'"):
        autolog.run(dir=tmp_path, sinks=["local"], resume="nope")
    with pytest.raises(TypeError, match="resume"):
        autolog.run(dir=tmp_path, sinks=["local"], resume=3)
    with pytest.raises(ValueError, match="resume_step: only with resume="):
        autolog.run(dir=tmp_path, sinks=["local"], resume_step=3)
    with pytest.raises(ValueError, match="resume_step"):
        autolog.run(dir=tmp_path, sinks=["local"], resume="same", resume_step=-1)
    assert autolog.current_run() is None


def test_a_run_still_being_written_cannot_be_resumed(tmp_path):
    with autolog.run(project="resume", dir=tmp_path, sinks=["local"]) as live:
        child = subprocess.run([sys.executable, "-c", "import autolog, sys; autolog.run(dir=sys.argv[1], "
                                "sinks=['local'], resume=sys.argv[2])", str(tmp_path), live.id],
                               capture_output=True, text=True, timeout=60)
    assert child.returncode == 1 and "is still being written by another process" in child.stderr
    assert autolog.read_run(live.path).status == "finished" and "attempts" not in autolog.read_run(live.path).meta


def test_a_tracked_function_resumes_too(tmp_path):
    @autolog.track(project="resume", dir=tmp_path, sinks=["local"])
    def train(epochs: int = 1):
        autolog.log({"e": float(epochs)}, step=epochs)
        return {"best": float(epochs)}

    train(1)
    (first,) = autolog.list_runs(tmp_path)
    resumed = autolog.track(project="resume", dir=tmp_path, sinks=["local"], resume=first.id, resume_step=2)(
        train.__wrapped__)
    resumed(epochs=3)
    data = autolog.read_run(first.path)
    assert data.config["epochs"] == 3 and data.metrics["e"] == [(1, 1.0), (3, 3.0)]
    assert data.summary["best"] == 3.0 and len(data.meta["attempts"]) == 2


def test_disabled_mode_ignores_resume(tmp_path):
    with autolog.run(dir=tmp_path, resume="anything", mode="disabled") as run:
        assert run.status == "disabled"
    assert not os.path.exists(tmp_path / "resume")


def test_sinks_of_a_resumed_run_line_up_tensorboard_purges_csv_rewinds_wandb_resumes(tmp_path, monkeypatch):
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DIR", str(tmp_path)),
                       ("WANDB_CACHE_DIR", str(tmp_path)), ("WANDB_CONFIG_DIR", str(tmp_path))):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sinks = ["local", "tensorboard", "csv", "wandb"]
    checkpoint: dict = {}
    with pytest.raises(RuntimeError):
        _train({"dir": tmp_path / "runs", "sinks": sinks}, fail_at=9, checkpoint_at=6, saved=checkpoint)
    # TensorBoard reads event files in name order (start second, host, pid, a counter): name the first
    # attempt's file as if it had started a minute earlier, as a real restart does, so that this
    # process's counter cannot order the two attempts' files the other way round
    (earlier,) = glob.glob(str(tmp_path / "runs" / "resume" / "*" / "tensorboard" / "events.out.tfevents.*"))
    stamp = os.path.basename(earlier).split(".")[3]
    os.rename(earlier, earlier.replace(f".{stamp}.", f".{int(stamp) - 60:010d}."))
    run = _train({"dir": tmp_path / "runs", "sinks": sinks, "resume": "last", "resume_step": 6},
                 start=6, state=checkpoint)
    stored = autolog.read_run(run.path).metrics["train/loss"]
    assert [s for s, _ in stored] == list(range(STEPS))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run.path, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()  # two event files: the second one's purge drops the first one's steps >= 6
    assert len(os.listdir(os.path.join(run.path, "tensorboard"))) == 2
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(STEPS))
    assert [e.value for e in events] == pytest.approx([v for _, v in stored], rel=1e-6)

    import pandas as pd

    frame = pd.read_csv(os.path.join(run.path, "metrics.csv"))
    loss = frame[frame["name"] == "train/loss"]
    assert list(zip(loss["step"], loss["value"])) == stored  # rows past the checkpoint dropped

    from autolog.sinks.wandb import wandb_run_id
    from autolog.sinks.wandb_records import read_wandb_run

    offline = sorted(d for d in os.listdir(os.path.join(run.path, "wandb")) if d.startswith("offline-run-"))
    assert len(offline) == 2  # one per attempt, one W&B run id: `wandb sync` continues the same run
    records = [read_wandb_run(os.path.join(run.path, "wandb", d)) for d in offline]
    assert {r.run_id for r in records} == {wandb_run_id(run.id)}
    second = [(row["_step"], row["train/loss"]) for row in records[1].history if "train/loss" in row]
    assert second == stored[6:]


def test_replay_of_a_resumed_run_writes_the_run_as_read_run_reads_it(tmp_path):
    from autolog.tools.replay import replay

    checkpoint: dict = {}
    with pytest.raises(RuntimeError):
        _train({"dir": tmp_path}, fail_at=9, checkpoint_at=6, saved=checkpoint)
    run = _train({"dir": tmp_path, "resume": "last", "resume_step": 6}, start=6, state=checkpoint)
    data = autolog.read_run(run.path)
    assert replay(data, ["csv"], out=lambda line: None) == 0

    import pandas as pd

    frame = pd.read_csv(os.path.join(run.path, "metrics.csv"))
    for name in ("train/loss", "seen"):
        rows = frame[frame["name"] == name]
        assert list(zip(rows["step"], rows["value"])) == data.metrics[name], name  # superseded left out
