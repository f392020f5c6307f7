"""The Lightning callback resumes with the trainer: a fit killed with SIGKILL mid-training and
resumed with ``fit(ckpt_path=...)`` reads back as one run whose steps and values match an
uninterrupted twin."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("lightning")

import autolog

_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lightning import Data, Net, _trainer
from autolog.integrations.lightning import AutologCallback
root, phase = sys.argv[1], sys.argv[2]

class KillAt(L.Callback):
    def __init__(self, callback):
        self.callback = callback
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if phase == "first" and trainer.global_step == 10:
            self.callback.run.flush(wait="log")  # steps past the checkpoint are stored: superseded later
            os.kill(os.getpid(), signal.SIGKILL)

import torch
torch.manual_seed(0)
net = Net()
cb = AutologCallback(project="lit", dir=os.path.join(root, "runs"), sinks=["local"], watch=None)
checkpoints = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_top_k=-1, every_n_epochs=1)
trainer = _trainer(cb, max_epochs=4, enable_checkpointing=True, callbacks=[cb, KillAt(cb), checkpoints])
trainer.fit(net, datamodule=Data(),
            ckpt_path=None if phase == "first" else os.path.join(root, "ckpt", "epoch=1-step=8.ckpt"))
"""

def test_a_sigkilled_fit_resumed_from_its_checkpoint_continues_its_run(tmp_path):
    from test_lightning import Data, Net, _trainer
    from autolog.integrations.lightning import AutologCallback

    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD.format(tests=os.path.dirname(__file__))))
    first = subprocess.run([sys.executable, str(script), str(tmp_path), "first"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    saved = sorted(os.listdir(tmp_path / "ckpt"))
    assert saved == ["epoch=0-step=4.ckpt", "epoch=0-step=4.ckpt.autolog.json", "epoch=1-step=8.ckpt",
                     "epoch=1-step=8.ckpt.autolog.json"]  # 4 steps an epoch; killed at step 10
    (crashed,) = autolog.list_runs(tmp_path / "runs")
    second = subprocess.run([sys.executable, str(script), str(tmp_path), "resume"], capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]

    twin = AutologCallback(project="lit", dir=tmp_path / "twin", sinks=["local"], watch=None)
    torch.manual_seed(0)
    _trainer(twin, max_epochs=4).fit(Net(), datamodule=Data())
    reference = autolog.read_run(twin.run.path)

    (run,) = autolog.list_runs(tmp_path / "runs")
    assert run.id == crashed.id and run.status == "finished"
    first_attempt, second_attempt = run.meta["attempts"]
    assert first_attempt["status"] == "crashed" and second_attempt["resume_step"] == 8
    assert second_attempt["checkpoint_offset"] <= second_attempt["log_offset"]
    bad = {}
    for name in sorted(reference.metrics):
        if name.startswith("perf/") or name == "val_best":  # timing; val_best: the module's own unsaved history
            continue
        steps = [s for s, _ in run.metrics.get(name, [])]
        ok = steps == sorted(set(steps)) and steps == [s for s, _ in reference.metrics[name]] and \
            [v for _, v in run.metrics[name]] == pytest.approx([v for _, v in reference.metrics[name]], rel=1e-5)
        if not ok:
            bad[name] = (run.metrics.get(name), reference.metrics[name])
    assert not bad, bad
    superseded = autolog.read_run(run.path, attempts=True).attempts[0].superseded
    assert [s for s, _ in superseded["train/loss"]] == [8, 9]
    # recorded at step 8 before the checkpoint (validation) or for its epoch (aggregates): kept
    assert 8 in [s for s, _ in run.metrics["val_loss"]] and 8 in [s for s, _ in run.metrics["train_loss_epoch"]]
