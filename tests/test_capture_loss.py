"""train/loss: one point per optimizer step, the sum of the backward calls since the previous step, unscaled."""
import pytest
import torch
import torch.nn.functional as F

from capture_util import batches, open_run, read, series, tiny


@pytest.mark.parametrize("log_every", [1, 3])
def test_loss_every_step_matches_hand_collected(tmp_path, log_every):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with open_run(tmp_path, log_every=log_every) as run:
        for i, (x, y) in enumerate(batches(7)):
            loss = F.mse_loss(model(x), y)
            expected[i] = float(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert run.step == 7
    assert series(read(run), "train/loss") == expected  # exact: the very values, no arithmetic


def test_first_loss_is_step_zero_and_last_unstepped_loss_is_kept(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(3)
    with open_run(tmp_path, log_every=50) as run:
        for x, y in data[:2]:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        last = F.mse_loss(model(data[2][0]), data[2][1])
        last.backward()  # no optimizer step after it: recorded when the run ends
    got = series(read(run), "train/loss")
    assert sorted(got) == [0, 1, 2]
    assert got[2] == float(last.detach())


def test_gradient_accumulation_records_the_sum_of_the_scaled_losses(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(12)
    expected = {}
    with open_run(tmp_path, log_every=2) as run:
        for step in range(4):
            values = []
            opt.zero_grad()
            for x, y in data[3 * step:3 * step + 3]:
                loss = F.mse_loss(model(x), y) / 3
                values.append(float(loss.detach()))
                loss.backward()
            expected[step] = sum(values)  # of loss / 3: the mean micro-batch loss
            opt.step()
    got = series(read(run), "train/loss")
    assert got.keys() == expected.keys()
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-6)


def test_autograd_backward_forms(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y), (x2, y2), (x3, y3) = batches(3)
    with open_run(tmp_path) as run:
        loss = F.mse_loss(model(x), y)
        torch.autograd.backward([loss])  # a one-tensor list: a loss
        opt.step()
        loss2 = F.mse_loss(model(x2), y2)
        torch.autograd.backward(loss2)
        opt.step()
        out = model(x3)
        out.backward(torch.ones_like(out))  # non-scalar with a gradient: not a loss, not broken
        assert model[0].weight.grad is not None
        scalar = F.mse_loss(model(x3), y3)
        scalar.backward(torch.tensor(2.0))  # an explicit gradient: not the loss either
        opt.step()
    got = series(read(run), "train/loss")
    assert got == {0: float(loss.detach()), 1: float(loss2.detach())}


def test_bf16_autocast_on_cpu(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with open_run(tmp_path, log_every=2) as run:
        for i, (x, y) in enumerate(batches(4)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                loss = F.mse_loss(out.float(), y)
            expected[i] = float(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert series(read(run), "train/loss") == expected
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_grad_scaler_loss_is_recorded_unscaled(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    expected = {}
    with open_run(tmp_path, log_every=2) as run:
        for i, (x, y) in enumerate(batches(4)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.mse_loss(model(x).float(), y)
            expected[i] = float(loss.detach())
            opt.zero_grad()
            scaled = scaler.scale(loss)
            assert float(scaled.detach()) != pytest.approx(expected[i])
            scaled.backward()
            scaler.step(opt)
            scaler.update()
    assert series(read(run), "train/loss") == expected


def test_loss_not_recorded_when_capture_excludes_it(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, capture=["optimizer"]) as run:
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        assert run.step == 3
    data = read(run)
    assert "train/loss" not in data.metrics
    assert "optim/lr" in data.metrics
    assert not any(name.startswith("perf/") for name in data.metrics)


