"""The Hugging Face integration resumes with the Trainer: a run killed with SIGKILL mid-training
and resumed with ``train(resume_from_checkpoint=True)`` reads back as one run whose steps and
values match an uninterrupted twin."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

pytest.importorskip("transformers")

import autolog

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

_CHILD = """
import os, signal, sys
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
from test_hf_trainer import make_trainer
from autolog.integrations.transformers import AutologCallback
import pathlib
root, phase = pathlib.Path(sys.argv[1]), sys.argv[2]

class KillAt(TrainerCallback):
    def __init__(self, callback):
        self.callback = callback
    def on_step_end(self, args, state, control, **kwargs):
        if phase == "first" and state.global_step == 5:
            self.callback.run.flush(wait="log")  # steps past the checkpoint are stored: superseded later
            os.kill(os.getpid(), signal.SIGKILL)

cb = AutologCallback(project="hf", dir=root / "runs", sinks=["local"], watch=None)
trainer = make_trainer(root / phase, [cb, KillAt(cb)], save_strategy="steps", save_steps=3,
                       output_dir=str(root / "out"))
trainer.train(resume_from_checkpoint=phase == "resume")
"""

COMPARED = ("loss", "grad_norm", "learning_rate", "epoch", "eval_loss", "train/loss", "train/grad_norm", "optim/lr")


def test_a_sigkilled_trainer_resumed_from_its_checkpoint_continues_its_run(tmp_path):
    from test_hf_trainer import callback, make_trainer

    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD.format(tests=os.path.dirname(__file__))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run([sys.executable, str(script), str(tmp_path), "first"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    marker = tmp_path / "out" / "checkpoint-3" / "autolog.json"
    assert marker.is_file()
    (crashed,) = autolog.list_runs(tmp_path / "runs")
    assert crashed.status == "crashed"
    second = subprocess.run([sys.executable, str(script), str(tmp_path), "resume"], capture_output=True,
                            text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-3000:]

    twin_cb = callback(tmp_path / "twin", watch=None)
    make_trainer(tmp_path / "twin", [twin_cb]).train()
    reference = autolog.read_run(twin_cb.run.path)

    (run,) = autolog.list_runs(tmp_path / "runs")
    assert run.id == crashed.id and run.status == "finished"
    first_attempt, second_attempt = run.meta["attempts"]
    assert first_attempt["status"] == "crashed" and second_attempt["resume_step"] == 3
    for name in COMPARED:
        steps = [s for s, _ in run.metrics[name]]
        assert steps == sorted(set(steps)), name  # no duplicates
        assert steps == [s for s, _ in reference.metrics[name]], name  # contiguous, as uninterrupted
        assert [v for _, v in run.metrics[name]] == pytest.approx([v for _, v in reference.metrics[name]],
                                                                  rel=1e-5), name
    assert [s for s, _ in run.metrics["eval_loss"]] == [3, 6]  # the checkpoint step's eval: kept
    superseded = autolog.read_run(run.path, attempts=True).attempts[0].superseded
    assert [s for s, _ in superseded["train/loss"]] == [3, 4] and [s for s, _ in superseded["loss"]] == [3, 4]
