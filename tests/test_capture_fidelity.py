"""Capture never changes training, and never reads a device value back between hand-offs."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import autolog
from capture_util import batches, open_run, tiny


def _train(steps: int, data) -> tuple[list[torch.Tensor], torch.Tensor]:
    model = tiny(seed=3, dropout=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    run = autolog.current_run()
    if run is not None:
        autolog.watch(model, log="all", log_every=1, graph=True)
    torch.manual_seed(7)
    for x, y in data:
        opt.zero_grad()
        for xs, ys in ((x[:3], y[:3]), (x[3:], y[3:])):  # accumulation, with dropout drawing RNG
            (F.mse_loss(model(xs), ys) / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


def test_training_is_bit_identical_with_and_without_capture(tmp_path):
    data = batches(6)
    plain, plain_rng = _train(6, data)
    with open_run(tmp_path, log_every=2) as run:
        tracked, tracked_rng = _train(6, data)
    assert run.status == "finished"
    assert len(plain) == len(tracked)
    for a, b in zip(plain, tracked):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(plain_rng, tracked_rng)  # no random number was drawn by autolog


def test_tracked_function_is_bit_identical(tmp_path):
    data = batches(4)

    @autolog.track(dir=str(tmp_path), sinks=["local"], log_every=1)
    def train():
        return _train(4, data)

    tracked, _ = train()
    plain, _ = _train(4, data)
    assert all(torch.equal(a, b) for a, b in zip(plain, tracked))


_SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def count_syncs():
    """Counts calls of the tensor methods that read a value back to the host, from any caller."""
    calls: list[str] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in _SYNCING}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in _SYNCING:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


def test_counter_sees_syncs():
    with count_syncs() as calls:
        t = torch.tensor([1.5])
        t.item(), float(t), bool(t), t.tolist()
    assert calls == ["item", "__float__", "__bool__", "tolist"]


@pytest.mark.parametrize("on_nan", ["warn", "raise"])
def test_no_host_sync_between_hand_offs(tmp_path, on_nan):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    data = batches(8)
    with open_run(tmp_path, log_every=1000, flush_secs=1000) as run:
        autolog.watch(model, log="all", log_every=1, on_nan=on_nan, graph=True)
        run.flush(wait=True)
        flushes = run.flush_count
        with count_syncs() as calls:
            for x, y in data:
                opt.zero_grad()
                for xs, ys in ((x[:3], y[:3]), (x[3:], y[3:])):
                    F.mse_loss(model(xs), ys).backward()
                opt.step()
                sched.step()
                autolog.log({"user/metric": F.mse_loss(model(x), y).detach()})
        assert run.flush_count == flushes  # no hand-off inside the counted window
        assert calls == []
        assert run.step == 8
        run.flush(wait=True)
    data = autolog.read_run(run.path)
    assert len(data.metrics["grad_norm/0.weight"]) == 8
    assert len(data.metrics["train/loss"]) == 8
    assert len(data.histograms["parameters/2.weight"]) == 8
