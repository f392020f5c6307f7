"""The Lightning integration: a tiny LightningModule trained with `AutologCallback`, read back from
the local store and compared with what the module recorded itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog.integrations.lightning import AutologCallback

pytestmark = pytest.mark.filterwarnings(
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*treespec.*:DeprecationWarning",
    "ignore:.*LeafSpec.*",
)

STEPS_PER_EPOCH = 4  # 32 samples, batches of 8


class Boom(Exception):
    pass


def _xy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 8, n_train: int = 32, n_val: int = 16):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return DataLoader(TensorDataset(*_xy(self.hparams.n_train, 0)), batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(TensorDataset(*_xy(self.hparams.n_val, 1)), batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return self.val_dataloader()


class Net(L.LightningModule):
    """Logs in every place Lightning allows, and keeps its own copy of what it logged."""

    def __init__(self, lr: float = 0.1, hidden: int = 3, api_key: str = "sk-live-abcdefghijklmnop1234",
                 fail_at: int | None = None, interrupt_at: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(3, 1)
        self.losses: list[tuple[int, float]] = []  # (step, loss) of each training batch
        self.maes: dict[int, list[float]] = {}  # epoch -> batch MAEs
        self.tails: list[tuple[int, float]] = []
        self.grads: list[tuple[int, dict[str, float], float, dict[str, float]]] = []
        self.val: dict[int, list[float]] = {}  # epoch -> validation batch losses
        self.test_losses: list[float] = []
        self.raised: BaseException | None = None

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at == self.global_step:
            self.raised = Boom(f"bad batch at step {self.global_step}")
            raise self.raised
        if self.hparams.interrupt_at == self.global_step:
            raise KeyboardInterrupt
        x, y = batch
        out = self(x)
        loss = F.mse_loss(out, y)
        mae = (out - y).abs().mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_mae", mae, on_step=False, on_epoch=True)
        self.losses.append((self.global_step, loss.item()))
        self.maes.setdefault(self.current_epoch, []).append(mae.item())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        step = self.global_step - 1  # the optimizer already stepped
        self.log("tail_metric", 100.0 + step)
        self.tails.append((step, 100.0 + step))

    def on_before_optimizer_step(self, optimizer):
        grads = {n: p.grad.norm().item() for n, p in self.named_parameters()}
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()])).item()
        weights = {n: p.detach().norm().item() for n, p in self.named_parameters()}
        self.grads.append((self.global_step, grads, total, weights))

    def on_train_epoch_end(self):
        self.log("epoch_end_metric", 10.0 * self.current_epoch)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("val_loss", loss)
        if not self.trainer.sanity_checking:
            self.val.setdefault(self.current_epoch, []).append(loss.item())

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val_best", min(_mean(v) for v in self.val.values()))

    def test_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("test_loss", loss)
        self.test_losses.append(loss.item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def _mean(values):
    return sum(values) / len(values)


def _trainer(callback, **kwargs):
    options = dict(max_epochs=2, accelerator="cpu", devices=1, enable_checkpointing=False, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    options.update(kwargs)
    return L.Trainer(**options)


def _approx(series):
    return [(step, pytest.approx(value, rel=1e-5, abs=1e-7)) for step, value in series]


def test_fit_records_config_self_log_values_optimizer_and_gradients(tmp_path):
    net, data = Net(), Data()
    callback = AutologCallback(project="lit", dir=tmp_path, sinks=["local"], watch="all", log_every=2)
    _trainer(callback).fit(net, datamodule=data)

    [run] = autolog.list_runs(tmp_path)
    assert run.path == callback.run.path and run.project == "lit"
    assert run.status == "finished"
    # config: module and datamodule hyperparameters (secrets redacted), trainer settings
    assert {k: run.config[k] for k in ("lr", "hidden", "fail_at", "batch_size", "n_train")} == \
        {"lr": 0.1, "hidden": 3, "fail_at": None, "batch_size": 8, "n_train": 32}
    assert run.config["api_key"] == "***"
    assert run.config["trainer.max_epochs"] == 2 and run.config["trainer.accumulate_grad_batches"] == 1

    m = run.metrics
    steps = list(range(2 * STEPS_PER_EPOCH))
    assert [s for s, _ in net.losses] == steps
    # self.log values at autolog's step (optimizer steps completed when the value was made)
    assert m["train_loss_step"] == _approx(net.losses)
    assert m["train_loss_epoch"] == _approx([(4, _mean([v for _, v in net.losses[:4]])),
                                             (8, _mean([v for _, v in net.losses[4:]]))])
    assert m["train_mae"] == _approx([(4, _mean(net.maes[0])), (8, _mean(net.maes[1]))])
    assert m["tail_metric"] == _approx(net.tails) and [s for s, _ in net.tails] == steps
    assert m["epoch_end_metric"] == [(4, 0.0), (8, 10.0)]
    assert m["val_loss"] == _approx([(4, _mean(net.val[0])), (8, _mean(net.val[1]))])  # no sanity-check values
    assert m["val_best"] == _approx([(4, _mean(net.val[0])), (8, min(_mean(net.val[0]), _mean(net.val[1])))])
    assert m["epoch"] == [(s, float(s // STEPS_PER_EPOCH)) for s in steps]
    assert m["global_step"] == [(s, float(s + 1)) for s in steps]  # Lightning's, after the batch's step
    # automatic capture agrees with Lightning's step and values
    assert m["train/loss"] == _approx(net.losses)
    assert m["optim/lr"] == [(s, 0.1) for s in steps]
    assert m["optim/momentum"] == [(s, 0.9) for s in steps]
    # watch("all") every log_every=2 steps: the gradients the optimizer step used
    watched = [g for g in net.grads if g[0] % 2 == 0]
    assert [g[0] for g in watched] == [0, 2, 4, 6]
    assert m["grad_norm/total"] == _approx([(s, total) for s, _g, total, _w in watched])
    for name in ("layer.weight", "layer.bias"):
        assert m[f"grad_norm/{name}"] == _approx([(s, g[name]) for s, g, _t, _w in watched])
        assert m[f"weight_norm/{name}"] == _approx([(s, w[name]) for s, _g, _t, w in watched])
        assert [s for s, _ in m[f"update_ratio/{name}"]] == [0, 2, 4, 6]
        assert [s for s, _e, _c in run.histograms[f"gradients/{name}"]] == [0, 2, 4, 6]
        assert [s for s, _e, _c in run.histograms[f"parameters/{name}"]] == [0, 2, 4, 6]
    assert not (tmp_path / "lightning_logs").exists() and not os.path.exists("lightning_logs")


def test_exception_in_training_step_fails_the_run_and_propagates_unchanged(tmp_path):
    net = Net(fail_at=2)
    with pytest.raises(Boom) as info:
        _trainer(AutologCallback(dir=tmp_path, sinks=["local"], log_every=50)).fit(net, datamodule=Data())
    assert info.value is net.raised
    [run] = autolog.list_runs(tmp_path)
    assert run.status == "failed"
    assert run.meta["exception_type"] == "Boom"
    assert run.meta["exception_message"] == "bad batch at step 2"
    assert "training_step" in run.meta["traceback"]
    assert run.metrics["train_loss_step"] == _approx(net.losses) and len(net.losses) == 2  # nothing lost
    assert run.metrics["train/loss"] == _approx(net.losses)


def test_keyboard_interrupt_gives_interrupted(tmp_path):
    previous = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into sys.exit(1)
            _trainer(AutologCallback(dir=tmp_path, sinks=["local"])).fit(Net(interrupt_at=1), datamodule=Data())
    finally:
        signal.signal(signal.SIGINT, previous)
    [run] = autolog.list_runs(tmp_path)
    assert run.status == "interrupted"
    assert len(run.metrics["train_loss_step"]) == 1


def _warmup(steps: int) -> None:
    """A few plain optimizer steps (their optimizer is gone when this returns)."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()


def test_tracked_function_calling_fit_and_test_is_one_run(tmp_path):
    net = Net()

    @autolog.track(project="tracked", dir=tmp_path, sinks=["local"], log_every=4)
    def train(seed: int = 7):
        _warmup(3)  # the run is at step 3 when fit starts
        trainer = _trainer(AutologCallback(watch=None))
        trainer.fit(net, datamodule=Data())
        trainer.test(net, datamodule=Data())
        return {"done": 1.0}

    assert train() == {"done": 1.0}
    [run] = autolog.list_runs(tmp_path)
    assert run.status == "finished" and run.project == "tracked"
    assert run.config["seed"] == 7 and run.config["lr"] == 0.1  # the function's arguments and the hparams
    shifted = [(s + 3, v) for s, v in net.losses]  # Lightning's steps follow the run's first 3
    assert run.metrics["train_loss_step"] == _approx(shifted)
    assert run.metrics["train/loss"][3:] == _approx(shifted) and len(run.metrics["train/loss"]) == 11
    assert run.metrics["test_loss"] == _approx([(11, _mean(net.test_losses))])  # after all 11 steps
    assert run.summary["done"] == 1.0
    assert not any(name.startswith("grad_norm/") for name in run.metrics)  # watch=None


def test_tracked_function_failing_inside_fit_records_the_failure_once(tmp_path):
    net = Net(fail_at=5)

    @autolog.track(dir=tmp_path, sinks=["local"])
    def train():
        _trainer(AutologCallback()).fit(net, datamodule=Data())

    with pytest.raises(Boom) as info:
        train()
    assert info.value is net.raised
    [run] = autolog.list_runs(tmp_path)
    assert run.status == "failed" and run.meta["exception_message"] == "bad batch at step 5"


def test_gradient_accumulation_steps_agree_with_global_step(tmp_path):
    net = Net()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], watch="gradients", log_every=1)
    trainer = _trainer(callback, accumulate_grad_batches=2)
    trainer.fit(net, datamodule=Data())
    assert trainer.global_step == 4
    run = autolog.read_run(callback.run.path)
    m = run.metrics
    # Lightning's step values of the batch that stepped (as its loggers do)
    assert m["train_loss_step"] == _approx([(s, v) for i, (s, v) in enumerate(net.losses) if i % 2 == 1])
    assert [s for s, _ in net.losses] == [0, 0, 1, 1, 2, 2, 3, 3]
    # autolog's loss: the sum of the scalars backward() ran on, which Lightning divides by 2
    assert m["train/loss"] == _approx([(s, (net.losses[2 * s][1] + net.losses[2 * s + 1][1]) / 2) for s in range(4)])
    assert [s for s, _ in m["optim/lr"]] == [0, 1, 2, 3]
    assert m["grad_norm/total"] == _approx([(s, total) for s, _g, total, _w in net.grads])
    assert m["train_loss_epoch"] == _approx([(2, _mean([v for _, v in net.losses[:4]])),
                                             (4, _mean([v for _, v in net.losses[4:]]))])


def test_resumed_fit_counts_steps_from_the_new_run(tmp_path):
    first = AutologCallback(dir=tmp_path / "a", sinks=["local"])
    trainer = _trainer(first, max_epochs=1)
    net = Net()
    trainer.fit(net, datamodule=Data())
    ckpt = tmp_path / "one-epoch.ckpt"
    trainer.save_checkpoint(ckpt)

    second = AutologCallback(dir=tmp_path / "b", sinks=["local"])
    resumed = Net()
    trainer = _trainer(second, max_epochs=2)
    trainer.fit(resumed, datamodule=Data(), ckpt_path=ckpt)
    assert trainer.global_step == 8
    m = autolog.read_run(second.run.path).metrics
    assert [s for s, _ in resumed.losses] == [4, 5, 6, 7]  # Lightning's global step
    assert m["train_loss_step"] == _approx([(s - 4, v) for s, v in resumed.losses])
    assert m["train/loss"] == m["train_loss_step"]
    assert [s for s, _ in m["val_loss"]] == [4]


class TwoOptimizers(L.LightningModule):
    """Manual optimization with two optimizers: Lightning's global_step counts both."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        loss_a = F.mse_loss(self.a(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        loss_b = F.mse_loss(self.b(x), y)
        opt_b.zero_grad()
        self.manual_backward(loss_b)
        opt_b.step()
        self.log("loss_a", loss_a)
        self.losses.append(loss_a.item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters(), lr=0.01)


def test_two_optimizers_share_the_runs_step_axis(tmp_path):
    net = TwoOptimizers()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], watch=None)
    trainer = _trainer(callback)
    trainer.fit(net, Data().train_dataloader())
    assert trainer.global_step == 16
    m = autolog.read_run(callback.run.path).metrics
    steps = list(range(8))  # the run's step: steps of its first optimizer
    assert m["loss_a"] == _approx(list(zip(steps, net.losses)))
    assert m["optim/lr"] == [(s, 0.1) for s in steps] and "optim/1/lr" in m
    assert m["global_step"] == [(s, 2.0 * (s + 1)) for s in steps]


def test_without_capture_steps_are_lightnings_global_step(tmp_path):
    net = Net()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], capture=False, watch=None)
    _trainer(callback).fit(net, datamodule=Data())
    m = autolog.read_run(callback.run.path).metrics
    assert m["train_loss_step"] == _approx(net.losses) and [s for s, _ in net.losses] == list(range(8))
    assert m["val_loss"] == _approx([(4, _mean(net.val[0])), (8, _mean(net.val[1]))])
    assert "train/loss" not in m and "optim/lr" not in m


def test_validate_alone_is_a_run_of_its_own(tmp_path):
    net = Net()
    callback = AutologCallback(dir=tmp_path, sinks=["local"])
    _trainer(callback).validate(net, datamodule=Data())
    run = autolog.read_run(callback.run.path)
    assert run.status == "finished"
    assert run.metrics["val_loss"] == _approx([(0, _mean(net.val[0]))])
    assert "train/loss" not in run.metrics


def test_disabled_mode_writes_nothing(tmp_path):
    net = Net()
    _trainer(AutologCallback(dir=tmp_path, sinks=["local"], mode="disabled")).fit(net, datamodule=Data())
    assert len(net.losses) == 8
    assert autolog.list_runs(tmp_path) == []
    assert autolog.current_run() is None


def test_default_logger_is_kept_with_a_warning_and_explicit_loggers_get_their_metrics(tmp_path):
    root = tmp_path / "root"
    with pytest.warns(UserWarning, match="logger=False"):
        _trainer(AutologCallback(dir=tmp_path / "runs", sinks=["local"]), logger=True,
                 default_root_dir=root).fit(Net(), datamodule=Data())
    assert (root / "lightning_logs").is_dir()  # Lightning's own; the callback leaves it alone

    from lightning.pytorch.loggers import CSVLogger

    csv = CSVLogger(tmp_path / "csv", name="mine")
    callback = AutologCallback(dir=tmp_path / "runs2", sinks=["local"])
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*AutologCallback.*")
        _trainer(callback, logger=csv, log_every_n_steps=1).fit(Net(), datamodule=Data())
    with open(os.path.join(csv.log_dir, "metrics.csv")) as fh:
        assert "train_loss_step" in fh.readline()
    assert autolog.read_run(callback.run.path).metrics["train_loss_step"]


def test_pytorch_lightning_import_path(tmp_path):
    import pytorch_lightning as PL

    class PLNet(PL.LightningModule):
        def __init__(self, lr: float = 0.05):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(3, 1)
            self.losses = []

        def training_step(self, batch, batch_idx):
            loss = F.mse_loss(self.layer(batch[0]), batch[1])
            self.log("loss", loss)
            self.losses.append((self.global_step, loss.item()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    net = PLNet()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], watch="gradients")
    trainer = PL.Trainer(max_epochs=1, accelerator="cpu", devices=1, enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callback)
    trainer.fit(net, DataLoader(TensorDataset(*_xy(32, 0)), batch_size=8))
    run = autolog.read_run(callback.run.path)
    assert run.status == "finished" and run.config["lr"] == 0.05
    assert run.metrics["loss"] == _approx(net.losses)
    assert run.metrics["train/loss"] == _approx(net.losses)


def test_default_sinks_leave_the_live_bar_to_lightning(tmp_path, capsys):
    _trainer(AutologCallback(dir=tmp_path, log_every=4), enable_progress_bar=True, max_epochs=1).fit(
        Net(), datamodule=Data())
    out = capsys.readouterr()
    assert "finished after" not in out.out + out.err  # no console sink (its summary's first line)
    _trainer(AutologCallback(dir=tmp_path, log_every=4), max_epochs=1).fit(Net(), datamodule=Data())
    out = capsys.readouterr()
    assert "finished after" in out.out + out.err  # the console sink's summary
    assert [r.status for r in autolog.list_runs(tmp_path)] == ["finished", "finished"]


def test_callback_options_are_checked():
    with pytest.raises(ValueError, match="watch"):
        AutologCallback(watch="weights")
    with pytest.raises(TypeError, match="watch_options"):
        AutologCallback(watch_options=["histograms"])


def test_import_autolog_does_not_import_lightning():
    code = ("import sys, autolog; bad = [m for m in ('lightning', 'pytorch_lightning', "
            "'autolog.integrations.lightning') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"


def test_self_log_values_stay_tensors_until_the_hand_off(tmp_path):
    class Probe(L.Callback):  # runs after AutologCallback: sees what it put in the run's buffer
        kinds: list = []

        def on_train_batch_end(self, trainer, pl_module, *args):
            scalars = autolog.current_run().buffer.scalars
            self.kinds = [type(v) for n, _s, v, _w in scalars if n in ("train_loss_step", "tail_metric")]

    probe, net = Probe(), Net()
    callback = AutologCallback(dir=tmp_path, sinks=["local"], watch=None, log_every=1000, flush_secs=3600)
    _trainer(callback, max_epochs=1, limit_val_batches=0, callbacks=[callback, probe]).fit(net, datamodule=Data())
    assert probe.kinds == [torch.Tensor] * 7  # 4 steps; the last tail value comes at the epoch's end
    m = autolog.read_run(callback.run.path).metrics
    assert m["train_loss_step"] == _approx(net.losses)
    assert m["tail_metric"] == _approx(net.tails) and [s for s, _ in net.tails] == [0, 1, 2, 3]
    assert m["epoch_end_metric"] == [(4, 0.0)]


def test_callback_pickles_before_and_after_fit(tmp_path):
    import pickle

    callback = AutologCallback(dir=tmp_path, sinks=["local"], watch="all", watch_options={"histograms": False})
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.run_options == callback.run_options and copy.watch_options == {"histograms": False}
    _trainer(callback, max_epochs=1).fit(Net(), datamodule=Data())
    again = pickle.loads(pickle.dumps(callback))
    assert again.run is None and callback.run is not None
    assert "gradients/layer.weight" not in autolog.read_run(callback.run.path).histograms
