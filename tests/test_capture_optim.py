"""Optimizer capture: step counting, lr/momentum/betas/weight decay per group and optimizer."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autolog
from capture_util import batches, open_run, read, series, tiny


@pytest.mark.parametrize("log_every", [1, 4])
def test_lr_follows_the_schedulers_own_values(tmp_path, log_every):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=9)
    lrs = {}
    with open_run(tmp_path, log_every=log_every) as run:
        for i, (x, y) in enumerate(batches(9)):
            lrs[i] = sched.get_last_lr()[0]  # the lr this step uses
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
    data = read(run)
    assert series(data, "optim/lr") == lrs
    assert len(set(lrs.values())) > 5  # the schedule really moved
    assert series(data, "optim/momentum") == {i: 0.9 for i in range(9)}
    assert series(data, "optim/weight_decay") == {i: 1e-4 for i in range(9)}
    assert data.meta["step"] == 9
    assert data.meta["optimizers"] == [{"index": 0, "type": "SGD", "steps": 9, "param_groups": 1}]


def test_adam_betas_and_param_groups(tmp_path):
    model = tiny()
    opt = torch.optim.AdamW([{"params": model[0].parameters()},
                             {"params": model[2].parameters(), "lr": 0.01, "betas": (0.8, 0.95)}], lr=0.1)
    with open_run(tmp_path) as run:
        for x, y in batches(2):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    data = read(run)
    assert series(data, "optim/lr") == {0: 0.1, 1: 0.1}
    assert series(data, "optim/lr/1") == {0: 0.01, 1: 0.01}
    assert series(data, "optim/beta1") == {0: 0.9, 1: 0.9}
    assert series(data, "optim/beta2/1") == {0: 0.95, 1: 0.95}
    assert series(data, "optim/weight_decay/1") == {0: 0.01, 1: 0.01}


def test_tensor_lr_is_copied_at_the_step(tmp_path):
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    with open_run(tmp_path) as run:
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.param_groups[0]["lr"].mul_(0.5)  # changed in place after the step
    assert series(read(run), "optim/lr") == pytest.approx({0: 0.1, 1: 0.05, 2: 0.025}, rel=1e-6)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def test_two_optimizers_gan(tmp_path):
    torch.manual_seed(0)
    gen, disc = Generator(), Discriminator()
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.05)
    opt_g = torch.optim.Adam(gen.parameters(), lr=0.002)
    real = torch.randn(5, 4)
    expected_g = {}
    d_losses, g_losses = {}, {}
    with open_run(tmp_path, log_every=2) as run:
        autolog.watch(disc, log="gradients", log_every=1)
        autolog.watch(gen, log="gradients", log_every=1)
        for it in range(4):
            z = torch.randn(5, 3)
            d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(gen(z).detach())).mean()
            opt_d.zero_grad()
            d_loss.backward()
            d_losses[run.step] = float(d_loss.detach())
            opt_d.step()  # the first optimizer to step: it advances the run's step
            g_loss = F.softplus(-disc(gen(z))).mean()
            opt_g.zero_grad()
            g_loss.backward()
            g_losses[run.step] = float(g_loss.detach())
            expected_g[run.step] = float(torch.linalg.vector_norm(gen.net[0].weight.grad))
            opt_g.step()
        assert run.step == 4
    data = read(run)
    assert series(data, "optim/lr") == {s: 0.05 for s in range(4)}
    assert series(data, "optim/1/lr") == {s: 0.002 for s in range(1, 5)}
    assert series(data, "optim/1/beta1") == {s: 0.9 for s in range(1, 5)}
    got = series(data, "grad_norm/Generator/net.0.weight")
    assert got.keys() == expected_g.keys()
    for step, value in expected_g.items():
        assert got[step] == pytest.approx(value, rel=1e-5)
    assert "grad_norm/net.0.weight" in data.metrics  # the first watched model: no prefix
    assert "grad_norm/Generator/total" in data.metrics
    # one loss series per optimizer: each step's own objective
    assert series(data, "train/loss") == d_losses
    assert series(data, "train/loss/1") == g_losses
    assert data.meta["optimizers"] == [
        {"index": 0, "type": "SGD", "steps": 4, "param_groups": 1},
        {"index": 1, "type": "Adam", "steps": 4, "param_groups": 1},
    ]


def test_new_optimizer_takes_over_when_the_first_is_gone(tmp_path):
    import gc

    model = tiny()
    with open_run(tmp_path) as run:
        for phase, lr in enumerate((0.1, 0.01)):
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for x, y in batches(2, seed=phase):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
            del opt
            gc.collect()
        assert run.step == 4
    data = read(run)
    assert series(data, "optim/lr") == {0: 0.1, 1: 0.1, 2: 0.01, 3: 0.01}
    assert [(o["index"], o["steps"]) for o in data.meta["optimizers"]] == [(0, 2), (0, 2)]


def test_capture_option_values(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    original = torch.Tensor.__dict__["backward"]
    with open_run(tmp_path, capture=False) as run:
        assert torch.Tensor.__dict__["backward"] is original  # nothing installed
        with pytest.warns(UserWarning, match="capture=False"):
            autolog.watch(model)
        for x, y in batches(2):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        assert run.step == 0
    assert read(run).metrics == {}
    with open_run(tmp_path, capture={"timing": False}) as run:
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    names = set(read(run).metrics)
    assert {"train/loss", "optim/lr"} <= names and not any(n.startswith("perf/") for n in names)
    with pytest.raises(ValueError, match="unknown name"):
        autolog.run(dir=str(tmp_path), capture=["loss", "gradients"])
    with pytest.raises(TypeError):
        autolog.run(dir=str(tmp_path), capture=3)


def test_compiled_optimizer_step_is_counted(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    @torch.compile(backend="eager")
    def step():
        opt.step()

    expected = {}
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model)
        for i, (x, y) in enumerate(batches(3)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            expected[i] = float(torch.linalg.vector_norm(model[0].weight.grad))
            step()
        assert run.step == 3
    data = read(run)
    assert series(data, "optim/lr") == {0: 0.1, 1: 0.1, 2: 0.1}
    assert series(data, "grad_norm/0.weight") == pytest.approx(expected, rel=1e-5)
