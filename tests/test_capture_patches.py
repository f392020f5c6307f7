"""Patches and hooks: installed exactly while a run captures, idempotent, never breaking the host."""
import torch
import torch.nn.functional as F
import wrapt
from torch.amp.grad_scaler import GradScaler
from torch.optim import optimizer as optim_mod

import autolog
from autolog.capture import patches
from autolog.capture.loss import Objective
from capture_util import batches, open_run, read, series, tiny


def _originals():
    from torch.nn.utils import clip_grad

    return (torch.Tensor.__dict__["backward"], vars(torch.autograd)["backward"], GradScaler.__dict__["scale"],
            len(optim_mod._global_optimizer_pre_hooks), len(optim_mod._global_optimizer_post_hooks),
            GradScaler.__dict__["step"], vars(torch.optim.Optimizer)["__init__"],
            vars(clip_grad).get("_clip_grads_with_norm_"), vars(clip_grad)["clip_grad_norm_"],
            vars(torch.nn.utils).get("clip_grads_with_norm_"))


def test_installed_only_while_a_run_is_open(tmp_path):
    before = _originals()
    assert not isinstance(before[1], wrapt.FunctionWrapper)
    with open_run(tmp_path):
        assert torch.Tensor.__dict__["backward"] is before[0]  # it calls torch.autograd.backward
        assert isinstance(vars(torch.autograd)["backward"], wrapt.FunctionWrapper)
        assert isinstance(GradScaler.__dict__["scale"], wrapt.FunctionWrapper)
        assert len(optim_mod._global_optimizer_post_hooks) == before[4] + 1
        assert all(isinstance(w, wrapt.FunctionWrapper) for w in
                   (GradScaler.__dict__["step"], vars(torch.optim.Optimizer)["__init__"]))
    assert _originals() == before
    with autolog.run(dir=str(tmp_path), mode="disabled"):
        assert _originals() == before


def test_run_ending_with_an_exception_removes_everything(tmp_path):
    before = _originals()
    try:
        with open_run(tmp_path):
            raise KeyError("boom")
    except KeyError:
        pass
    assert _originals() == before


def test_instrument_uninstrument_round_trips():
    before = _originals()
    p = patches.Patches()
    assert p.instrument() is True
    assert p.instrument() is False  # idempotent
    assert p.installed
    assert p.uninstrument() is True
    assert p.uninstrument() is False
    assert _originals() == before
    assert p.instrument() is True
    assert p.uninstrument() is True
    assert _originals() == before


def test_refcount_over_runs():
    before = _originals()
    patches.acquire()
    patches.acquire()
    patches.release()
    assert patches.PATCHES.installed
    patches.release()
    assert not patches.PATCHES.installed
    patches.release()  # one too many: harmless
    assert _originals() == before


def test_wrapped_on_top_by_someone_else(tmp_path):
    """A third party wrapping over ours: ours stays, as a pass-through outside runs."""
    before = vars(torch.autograd)["backward"]
    seen = []
    with open_run(tmp_path):
        wrapt.wrap_function_wrapper(torch.autograd, "backward",
                                    lambda wrapped, inst, args, kwargs: seen.append(1) or wrapped(*args, **kwargs))
        theirs = vars(torch.autograd)["backward"]
    try:
        assert vars(torch.autograd)["backward"] is theirs
        model = tiny()
        x, y = batches(1)[0]
        F.mse_loss(model(x), y).backward()  # no run: nothing captured, nothing broken
        assert seen == [1] and model[0].weight.grad is not None
    finally:
        torch.autograd.backward = before


def test_a_failing_capture_never_breaks_training(tmp_path, monkeypatch, capsys):
    def broken(self):
        raise RuntimeError("injected")

    monkeypatch.setattr(Objective, "take", broken)  # the loss capture fails at every step
    model, reference = tiny(), tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model)
        for x, y in batches(3):
            for m, o in ((model, opt), (reference, ref_opt)):
                o.zero_grad()
                F.mse_loss(m(x), y).backward()
                o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    err = capsys.readouterr().err
    assert err.count("automatic capture of loss failed") == 1 and "injected" in err
    data = read(run)
    assert data.meta["capture_errors"] == {"loss": "RuntimeError: injected"}
    assert "train/loss" not in data.metrics
    assert sorted(series(data, "grad_norm/0.weight")) == [0, 1, 2]  # the rest goes on


def test_backward_outside_a_run_is_untouched(tmp_path):
    model = tiny()
    x, y = batches(1)[0]
    F.mse_loss(model(x), y).backward()
    with open_run(tmp_path) as run:
        pass
    F.mse_loss(model(x), y).backward()
    assert "train/loss" not in read(run).metrics
