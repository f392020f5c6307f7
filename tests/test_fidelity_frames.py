"""Tracebacks and warnings point at the user's code: `NonFiniteWarning` is attributed to the user's
line, and autolog's frames in the path of a user exception are as few as wrapt allows -- the counts
the README's "Fidelity" section states are pinned here."""
from __future__ import annotations

import os
import traceback
import warnings

import pytest
import torch

import autolog
from autolog.capture.errors import NonFiniteWarning

AUTOLOG_DIR = os.path.dirname(autolog.__file__) + os.sep


class Explodes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        raise KeyboardInterrupt  # as if Ctrl-C arrived inside the backward


class FailingSGD(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("user's optimizer failed")


def _autolog_frames(exc: BaseException) -> list[str]:
    return [f"{os.path.basename(fs.filename)}:{fs.name}" for fs in traceback.extract_tb(exc.__traceback__)
            if fs.filename.startswith(AUTOLOG_DIR)]


def _loss(model):
    return Explodes.apply(model(torch.ones(2, 2))).sum()


def test_one_autolog_frame_in_a_backward(tmp_path):
    model = torch.nn.Linear(2, 1)
    with autolog.run(sinks=["local"], dir=str(tmp_path)):
        with pytest.raises(KeyboardInterrupt) as info:
            _loss(model).backward()
        assert _autolog_frames(info.value) == ["patches.py:_autograd_backward"]
        with pytest.raises(KeyboardInterrupt) as info:
            torch.autograd.backward(_loss(model))
        assert _autolog_frames(info.value) == ["patches.py:_autograd_backward"]


def test_no_autolog_frame_in_an_optimizer_step(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = FailingSGD(model.parameters(), lr=0.1)
    with autolog.run(sinks=["local"], dir=str(tmp_path)):
        autolog.watch(model, log="all")
        model(torch.ones(2, 2)).sum().backward()
        with pytest.raises(RuntimeError, match="user's optimizer failed") as info:
            opt.step()
    assert _autolog_frames(info.value) == []


def test_tracked_function_adds_one_frame(tmp_path):
    model = torch.nn.Linear(2, 1)

    @autolog.track(sinks=["local"], dir=str(tmp_path))
    def train():
        _loss(model).backward()

    with pytest.raises(KeyboardInterrupt) as info:
        train()
    assert _autolog_frames(info.value) == ["api.py:wrapper", "patches.py:_autograd_backward"]
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == "interrupted"


@pytest.mark.parametrize("where", ["during", "at_end"])
def test_nonfinite_warning_points_at_the_users_line(tmp_path, where):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autolog.run(sinks=["local"], dir=str(tmp_path), log_every=2) as run:
            autolog.watch(model)
            steps = 40 if where == "during" else 2
            for i in range(steps):
                loss = model(torch.ones(2, 2)).sum() * (float("nan") if i == 0 else 1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if where == "during":
                    run.flush(wait=True)  # the writer has seen the NaN: told at the next call
    found = [w for w in caught if issubclass(w.category, NonFiniteWarning)]
    assert len(found) == 1
    assert found[0].filename == __file__, found[0].filename
    assert autolog.read_run(run.path).meta["nonfinite"]["step"] == 0


def test_warnings_as_errors_never_raise_into_training(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with autolog.run(sinks=["local"], dir=str(tmp_path), log_every=2) as run:
            autolog.watch(model)
            for i in range(6):
                loss = model(torch.ones(2, 2)).sum() * (float("nan") if i == 0 else 1.0)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.flush(wait=True)
    back = autolog.read_run(run.path)
    assert back.status == "finished" and back.meta["nonfinite"]["step"] == 0
