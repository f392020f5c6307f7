"""Steps, losses and throughput of real Lightning trainers (automatic and manual optimization),
against what the LightningModule records itself."""
from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog.integrations.lightning import AutologCallback

pytestmark = pytest.mark.filterwarnings(
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*treespec.*:DeprecationWarning",
    "ignore:.*LeafSpec.*",
)

BATCH = 4


def loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-1.0], [0.5]])), batch_size=BATCH)


def trainer(callback, **options) -> L.Trainer:
    return L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[callback], **options)


class Automatic(L.LightningModule):
    """training_step calls an inner ``self.model`` (its own forward never runs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("watch", ["gradients", None])
def test_automatic_optimization_with_accumulation(tmp_path, watch):
    net = Automatic()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], log_every=1, watch=watch)
    trainer(callback, accumulate_grad_batches=2).fit(net, loader())
    assert len(net.losses) == 4
    m = autolog.read_run(callback.run.path).metrics
    # the step's objective: Lightning divides each micro-batch loss by 2 -> their mean
    expected = [(s, (net.losses[2 * s] + net.losses[2 * s + 1]) / 2) for s in range(2)]
    assert [s for s, _ in m["train/loss"]] == [0, 1]
    for (_, got), (_, want) in zip(m["train/loss"], expected):
        assert got == pytest.approx(want, rel=1e-6)
    # throughput from Lightning's batches: 2 batches of 4 per optimizer step
    step_time = dict(m["perf/step_time"])
    assert dict(m["perf/samples_per_sec"]) == pytest.approx({1: 2 * BATCH / step_time[1]})


def test_automatic_optimization_gradient_clipping_records_the_norm(tmp_path):
    norms = []

    class Clipped(Automatic):
        def on_before_optimizer_step(self, optimizer):
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    net = Clipped()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], log_every=1, watch=None)
    trainer(callback, gradient_clip_val=1e-3).fit(net, loader())
    m = autolog.read_run(callback.run.path).metrics
    assert [s for s, _ in m["train/grad_norm"]] == [0, 1, 2, 3]
    for (_, got), want in zip(m["train/grad_norm"], norms):
        assert got == pytest.approx(want, rel=1e-5)  # the norm before Lightning clipped


class Manual(L.LightningModule):
    """Manual optimization, two optimizers (a GAN-like pair), named for autolog."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.a = nn.Linear(3, 1)
        self.b = nn.Linear(3, 1)
        self.printed: list[tuple[float, float]] = []

    def training_step(self, batch, batch_idx):
        opt_a, opt_b = self.optimizers()
        x, y = batch
        loss_a = F.mse_loss(self.a(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        loss_b1 = F.mse_loss(self.b(x), y)
        loss_b2 = F.l1_loss(self.b(x), y)
        opt_b.zero_grad()
        self.manual_backward(loss_b1)
        self.manual_backward(loss_b2)
        opt_b.step()
        self.printed.append((float(loss_a.detach()), float(loss_b1.detach() + loss_b2.detach())))

    def configure_optimizers(self):
        opt_a = torch.optim.SGD(self.a.parameters(), lr=0.05)
        opt_b = autolog.name_optimizer(torch.optim.Adam(self.b.parameters(), lr=0.01), "B")
        return opt_a, opt_b


def test_manual_optimization_two_optimizers(tmp_path):
    net = Manual()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], log_every=1, watch=None)
    trainer(callback).fit(net, loader())
    m = autolog.read_run(callback.run.path).metrics
    assert dict(m["train/loss"]) == pytest.approx({s: a for s, (a, _b) in enumerate(net.printed)}, rel=1e-6)
    assert dict(m["train/loss/B"]) == pytest.approx({s + 1: b for s, (_a, b) in enumerate(net.printed)}, rel=1e-6)
    assert dict(m["optim/B/lr"]) == {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01}
