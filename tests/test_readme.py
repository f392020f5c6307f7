"""The README cannot rot: every Python block marked ``<!-- runnable -->`` runs as written, in a
fresh interpreter in an empty directory, and exits 0."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- runnable -->"
MIN_BLOCKS = 6


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python fence whose previous line is the marker."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
            raise AssertionError(f"README.md:{i + 1}: {MARKER} must be followed by a ```python fence")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 2}: unterminated fence")
        blocks.append((i + 3, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


BLOCKS = runnable_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_enough_runnable_blocks():
    assert len(BLOCKS) >= MIN_BLOCKS, [line for line, _ in BLOCKS]


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_written(tmp_path, line, code):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    # WANDB_SERVICE: W&B's token for this process's own W&B service (set once a test here used
    # W&B); inherited, the block's W&B would talk to that service instead of starting its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLOG_") and k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
