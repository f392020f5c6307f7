"""The NaN/Inf alarm: first bad step and parameter, at the hand-off, per on_nan policy."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import autolog
from autolog.capture.errors import NonFiniteWarning
from capture_util import batches, open_run, read, tiny


def _train(model, opt, steps, bad_step, how):
    """`how`: "grad" poisons the gradient of 2.weight at `bad_step`; "loss" the loss."""
    run = autolog.current_run()
    for i, (x, y) in enumerate(batches(steps)):
        loss = F.mse_loss(model(x), y)
        handle = None
        if i == bad_step:
            if how == "loss":
                loss = loss * float("nan")
            else:
                handle = model[2].weight.register_hook(lambda g: g * float("inf"))
        opt.zero_grad()
        loss.backward()
        if handle is not None:
            handle.remove()
        opt.step()
    return run


def test_warn_names_first_bad_step_and_parameter(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(NonFiniteWarning, match=r"step 4: the gradient of '2\.weight'"):
        with open_run(tmp_path, log_every=3) as run:
            autolog.watch(model, log=None)
            _train(model, opt, 8, 4, "grad")
            run.flush(wait=True)
            assert run.meta["nonfinite"] == {"step": 4, "parameter": "2.weight", "loss": False}
    data = read(run)
    assert data.status == "finished"
    assert data.meta["nonfinite"] == {"step": 4, "parameter": "2.weight", "loss": False}
    assert not any(name.startswith("\x00") for name in data.metrics)  # internal records stay internal


def test_loss_only_without_watch(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(NonFiniteWarning, match="step 2: the loss"):
        with open_run(tmp_path, log_every=2) as run:
            _train(model, opt, 5, 2, "loss")
    assert read(run).meta["nonfinite"] == {"step": 2, "parameter": None, "loss": True}


def test_nan_loss_and_gradients_at_the_same_step(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(NonFiniteWarning):
        with open_run(tmp_path, log_every=2) as run:
            autolog.watch(model)
            _train(model, opt, 5, 3, "loss")
    assert read(run).meta["nonfinite"] == {"step": 3, "parameter": "0.weight", "loss": True}


def test_raise_at_the_hand_off(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    reached = []
    with pytest.raises(autolog.NonFiniteError) as info:
        with open_run(tmp_path, log_every=3) as run:
            autolog.watch(model, on_nan="raise")
            for i, (x, y) in enumerate(batches(10)):
                loss = F.mse_loss(model(x), y)
                handle = model[2].weight.register_hook(lambda g: g * float("nan")) if i == 4 else None
                opt.zero_grad()
                loss.backward()
                if handle is not None:
                    handle.remove()
                reached.append(i)
                opt.step()  # raises at the first hand-off after step 4: the end of step 5
    assert info.value.step == 4 and info.value.parameter == "2.weight"
    assert reached == [0, 1, 2, 3, 4, 5]
    data = read(run)
    assert data.status == "failed" and data.meta["exception_type"] == "NonFiniteError"
    assert data.meta["nonfinite"] == {"step": 4, "parameter": "2.weight", "loss": False}


def test_ignore_checks_nothing(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        with open_run(tmp_path, log_every=2) as run:
            autolog.watch(model, on_nan="ignore")
            _train(model, opt, 4, 1, "grad")
    assert "nonfinite" not in read(run).meta


def test_finite_run_has_no_finding(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        with open_run(tmp_path, log_every=2) as run:
            autolog.watch(model, on_nan="raise")
            _train(model, opt, 5, -1, "grad")
    assert "nonfinite" not in read(run).meta
