import os
import signal

import pytest

pytest_plugins = ["autolog.testing"]

# The signal tests need Ctrl-C's usual behaviour here and in the children they start. A shell
# that runs the suite in the background without job control (`bash -c 'pytest &'`, nohup) starts
# it with SIGINT ignored, and an ignored signal stays ignored across exec: give the suite the
# behaviour of a terminal (a Python handler here, so exec'd children get the default back).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Every test starts with no AUTOLOG_* settings, W&B offline and silent, and cwd in tmp."""
    for key in list(os.environ):
        if key.startswith("AUTOLOG_"):
            monkeypatch.delenv(key)
    # wandb before 0.20 puts its service's address in os.environ at the first wandb.init; a child
    # process (a README block, a signal test) inherits it, and the child's exit shuts the
    # service down under this process's later W&B tests. Children start as on a fresh machine.
    os.environ.pop("WANDB_SERVICE", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield
    import sys

    run_mod = sys.modules["autolog.core.run"]  # the module; `autolog.core.run` is the function
    leftover = list(run_mod._active)
    for r in leftover:
        r.finish()
    assert not leftover, f"a test left runs open: {leftover}"
