"""The `autolog` command: demo, list, show; packaging promises checked in fresh interpreters."""
import json
import shutil
import subprocess
import sys

import autolog


def _autolog(*args, cwd):
    exe = shutil.which("autolog")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "autolog.tools.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_demo_stores_a_run_and_says_where(tmp_path):
    out = _autolog("demo", "--epochs", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [run] = autolog.list_runs(str(tmp_path / "runs"))
    assert run.path in out.stdout and f"autolog show {run.id}" in out.stdout
    assert run.status == "finished" and run.project == "demo"
    assert len(run.metrics["train/loss"]) == 28  # one epoch of 1792 samples in batches of 64
    assert {"optim/lr", "grad_norm/total", "val/acc"} <= set(run.metrics)
    assert run.config["epochs"] == 1

    listed = _autolog("list", cwd=tmp_path)
    assert listed.returncode == 0 and run.id in listed.stdout and "finished" in listed.stdout
    shown = _autolog("show", run.id[:17], "--json", cwd=tmp_path)
    data = json.loads(shown.stdout)
    assert data["id"] == run.id and data["config"]["lr"] == run.config["lr"]
    assert data["summary"]["val/acc"] == run.summary["val/acc"]
    missing = _autolog("show", "nope", cwd=tmp_path)
    assert missing.returncode != 0 and "no run 'nope'" in missing.stderr


def test_import_is_light():
    code = ("import sys, autolog; heavy = [m for m in ('wandb', 'tensorboard', 'lightning', "
            "'pytorch_lightning', 'matplotlib', 'pandas') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
