"""Epochs: the training DataLoader's passes, `autolog.epoch_end()`, the ``epoch`` series and
``on_epoch`` aggregates compared with hand computations, read back from the store, TensorBoard
and a W&B offline run, and reduced across real gloo ranks."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensorboard.backend.event_processing import event_accumulator as ea
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog.pipeline import epochs as epochs_mod
from autolog.sinks.wandb import WandbSink
from autolog.sinks.wandb_records import read_wandb_run

BATCHES = 3  # batches per training epoch


def _data(n=BATCHES * 4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, generator=gen), torch.randn(n, 1, generator=gen))


def _train(tmp_path, epochs=3, sinks=("local",), validate=None, log_every=50, body=None, **run_kw):
    """A course-style loop: `epochs` passes over a training loader (and `validate(model)` after
    each); `body(model, loss, epoch, batch)` logs what the test needs. Returns (run, hand)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train = DataLoader(_data(), batch_size=4)
    hand: dict = {"losses": []}
    with autolog.run(project="ep", dir=str(tmp_path), sinks=list(sinks), log_every=log_every, **run_kw) as run:
        for epoch in range(epochs):
            for i, (x, y) in enumerate(train):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                hand["losses"].append((epoch, loss.item()))
                if body is not None:
                    body(model, loss, epoch, i)
            if validate is not None:
                validate(model, epoch)
    return run, hand


def test_the_training_loader_makes_the_epochs_and_the_epoch_series(tmp_path):
    run, _ = _train(tmp_path, epochs=3)
    data = autolog.read_run(run.path)
    assert data.metrics["epoch"] == [(s, float(s // BATCHES)) for s in range(3 * BATCHES)]
    assert run.epoch == 3  # the run's end ended the last epoch


def test_epoch_aggregates_match_hand_computations(tmp_path):
    logged: dict = {}

    def body(model, loss, epoch, i):
        value = loss.detach() * (i + 1)  # a tensor: aggregated on its device
        logged.setdefault(epoch, []).append(value.item())
        autolog.log("train/mse", value, on_epoch=True)  # on_step too: _step and _epoch
        autolog.log("sum", float(i), on_step=False, on_epoch=True, reduce="sum")  # Python numbers
        autolog.log("max", value, on_step=False, on_epoch=True, reduce="max")
        autolog.log("min", value, on_step=False, on_epoch=True, reduce="min")

    run, _ = _train(tmp_path, epochs=3, body=body)
    m = autolog.read_run(run.path).metrics
    # logged after optimizer.step(): at the step count then; each aggregate at its last value's
    last = [BATCHES * (e + 1) for e in range(3)]
    assert [s for s, _ in m["train/mse_epoch"]] == last
    assert [v for _, v in m["train/mse_epoch"]] == pytest.approx([sum(logged[e]) / BATCHES for e in range(3)])
    assert m["max"] == [(s, pytest.approx(max(logged[e]))) for e, s in enumerate(last)]
    assert m["min"] == [(s, pytest.approx(min(logged[e]))) for e, s in enumerate(last)]
    assert m["sum"] == [(s, float(sum(range(BATCHES)))) for s in last]
    # per step under <name>_step (logged after optimizer.step: at the step count then)
    assert [v for _, v in m["train/mse_step"]] == pytest.approx([v for e in range(3) for v in logged[e]])
    assert "train/mse" not in m


def test_values_logged_before_the_step_aggregate_at_the_epochs_last_step_as_in_lightning(tmp_path):
    """Lightning's training_step logs before optimizer.step(); its epoch values sit at the
    epoch's last step. The same loop order gives the same steps here."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hand: dict = {}
    dataset = _data()
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]) as run:
        for epoch in range(2):
            for x, y in DataLoader(dataset, batch_size=4):  # a new loader each epoch, one dataset
                loss = torch.nn.functional.mse_loss(model(x), y)
                autolog.log("loss", loss.detach(), on_step=True, on_epoch=True)  # training_step
                hand.setdefault(epoch, []).append(loss.item())
                opt.zero_grad()
                loss.backward()
                opt.step()
    m = autolog.read_run(run.path).metrics
    assert m["epoch"] == [(s, float(s // BATCHES)) for s in range(2 * BATCHES)]
    assert [s for s, _ in m["loss_step"]] == list(range(2 * BATCHES))
    assert m["loss_epoch"] == [(BATCHES * (e + 1) - 1, pytest.approx(sum(hand[e]) / BATCHES)) for e in range(2)]


def test_validation_loaders_do_not_count_and_their_values_aggregate_into_the_epoch(tmp_path):
    val = DataLoader(_data(8, seed=1), batch_size=4)
    hand: dict = {}

    def validate(model, epoch):
        with torch.no_grad():  # the usual form: the loader iterated under no_grad
            for x, y in val:
                v = torch.nn.functional.mse_loss(model(x), y)
                hand.setdefault(epoch, []).append(v.item())
                autolog.log("val/loss", v, on_step=False, on_epoch=True)
        model.eval()  # the other usual form: iterated with gradients on, no_grad inside
        for x, y in val:
            with torch.no_grad():
                model(x)
        model.train()

    run, _ = _train(tmp_path, epochs=2, validate=validate)
    m = autolog.read_run(run.path).metrics
    assert m["epoch"] == [(s, float(s // BATCHES)) for s in range(2 * BATCHES)]
    assert m["val/loss"] == [(BATCHES * (e + 1), pytest.approx(sum(hand[e]) / 2)) for e in range(2)]


def test_sanity_validation_before_training_is_not_the_training_loader(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train, val = DataLoader(_data(), batch_size=4), DataLoader(_data(8, 1), batch_size=4)
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]) as run:
        for x, _y in val:  # iterated in grad mode before training starts
            model(x)
        for _epoch in range(2):
            for x, y in train:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
            for x, _y in val:  # after each epoch, with gradients on: never the training loader
                model(x).sum()
    assert autolog.read_run(run.path).metrics["epoch"] == [(s, float(s // BATCHES)) for s in range(2 * BATCHES)]


def test_epoch_end_marks_epochs_without_a_dataloader(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    values = []
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]) as run:
        for epoch in range(2):
            for i in range(4):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                values.append(loss.item())
                autolog.log("l", loss.detach(), on_step=False, on_epoch=True)
            assert run.epoch == epoch
            autolog.epoch_end()
        autolog.log("tail", 1.0, on_step=False, on_epoch=True)  # an epoch the run's end ends
    m = autolog.read_run(run.path).metrics
    # the series starts at the first epoch_end, from the epoch's first step
    assert m["epoch"] == [(s, float(s // 4)) for s in range(8)]
    assert m["l"] == [(4, pytest.approx(sum(values[:4]) / 4)), (8, pytest.approx(sum(values[4:]) / 4))]
    assert m["tail"] == [(8, 1.0)]


def test_epoch_end_before_the_loaders_next_pass_ends_the_epoch_once(tmp_path):
    def validate(model, epoch):
        autolog.log("per_epoch", float(epoch), on_step=False, on_epoch=True)
        autolog.epoch_end()

    run, _ = _train(tmp_path, epochs=3, validate=validate)
    m = autolog.read_run(run.path).metrics
    assert m["epoch"] == [(s, float(s // BATCHES)) for s in range(3 * BATCHES)]
    assert m["per_epoch"] == [(BATCHES * (e + 1), float(e)) for e in range(3)]
    assert run.epoch == 3


def test_a_user_epoch_series_turns_the_automatic_one_off(tmp_path):
    run, _ = _train(tmp_path, epochs=2, body=lambda m, l, epoch, i: autolog.log("epoch", float(epoch)))
    points = autolog.read_run(run.path).metrics["epoch"]
    # the user's only, logged after each optimizer step (at the step count then): the automatic
    # point of step 0, recorded before the user's first call, was taken back before its hand-off
    assert points == [(s + 1, float(s // BATCHES)) for s in range(2 * BATCHES)]


def test_a_framework_training_loop_keeps_its_own_epochs(tmp_path):
    """A loop run from a function named as the HF Trainer's, in a module path holding
    "transformers" (`FRAMEWORK_LOOPS`), is left to the framework: no automatic epoch series."""
    from autolog.capture import epochs as capture_epochs

    namespace: dict = {}
    code = compile("def _inner_training_loop(fn):\n    return fn()\n",
                   os.path.join("site-packages", "transformers", "trainer.py"), "exec")
    exec(code, namespace)
    assert capture_epochs.FRAMEWORK_LOOPS == (("transformers", "_inner_training_loop"),)
    run, _ = namespace["_inner_training_loop"](lambda: _train(tmp_path, epochs=2))
    assert "epoch" not in autolog.read_run(run.path).metrics


def test_a_reduction_stays_the_same_within_an_epoch(tmp_path):
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        autolog.log("x", 1.0, on_epoch=True)
        with pytest.raises(ValueError, match="reduce='mean' earlier in this epoch"):
            autolog.log("x", 5.0, on_epoch=True, reduce="max")
        autolog.epoch_end()
        autolog.log("x", 5.0, on_epoch=True, reduce="max")  # a new epoch: a new choice
    m = autolog.read_run(run.path).metrics
    assert [v for _, v in m["x_epoch"]] == [1.0, 5.0]


def test_aggregates_stay_on_the_device_until_the_hand_off(tmp_path, monkeypatch):
    """Long epochs fold their tensors into one device tensor every FOLD values; what the buffer
    receives at the epoch's end is a tensor (no value was read back to compute it)."""
    monkeypatch.setattr(epochs_mod, "FOLD", 7)
    values = torch.linspace(-3, 5, 50)
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        for v in values:
            autolog.log("m", v.clone(), on_step=False, on_epoch=True)
            autolog.log("s", v.clone(), on_step=False, on_epoch=True, reduce="sum")
            autolog.log("hi", v.clone(), on_step=False, on_epoch=True, reduce="max")
        autolog.log("hi", 99.0, on_step=False, on_epoch=True, reduce="max")  # a Python number too
        aggregates = run._epochs.aggregates
        assert len(aggregates["m"].pending) < 7 and aggregates["m"].device  # folded on the way
        autolog.epoch_end()
        pending = {name: value for name, _s, value, _w in run.buffer.scalars}
        assert all(isinstance(pending[n], torch.Tensor) for n in ("m", "s", "hi"))
    m = autolog.read_run(run.path).metrics
    assert m["m"] == [(0, pytest.approx(values.double().mean().item()))]
    assert m["s"] == [(0, pytest.approx(values.double().sum().item()))]
    assert m["hi"] == [(0, 99.0)]


def test_nan_propagates_through_max_and_mean(tmp_path):
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        for v in (1.0, float("nan"), 3.0):
            autolog.log("hi", v, on_step=False, on_epoch=True, reduce="max")
            autolog.log("t", torch.tensor(v), on_step=False, on_epoch=True)
    m = autolog.read_run(run.path).metrics
    assert math.isnan(m["hi"][0][1]) and math.isnan(m["t"][0][1])


def test_prog_bar_and_logger_false_apply_to_epoch_values(tmp_path):
    from autolog.testing import MemorySink

    memory = MemorySink()
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local", memory], capture=False) as run:
        autolog.log("shown", 1.0, on_epoch=True, prog_bar=True, step=0)
        autolog.log("bar_only", 2.0, on_epoch=True, logger=False, step=0)
    assert set(autolog.read_run(run.path).metrics) == {"shown_step", "shown_epoch"}
    assert {n for b in memory.batches for n in b.prog_bar} == {"shown_step", "shown_epoch"}
    assert {p[0] for b in memory.batches for p in b.bar} == {"bar_only_step", "bar_only_epoch"}


def test_epoch_values_in_tensorboard_and_wandb_match_the_store(tmp_path):
    def body(model, loss, epoch, i):
        autolog.log("train/acc", 1.0 - loss.detach(), on_epoch=True, prog_bar=True)

    run, _ = _train(tmp_path, epochs=2, sinks=("local", "tensorboard", WandbSink(mode="offline")),
                    body=body, log_every=2)
    m = autolog.read_run(run.path).metrics
    acc = ea.EventAccumulator(os.path.join(run.path, "tensorboard"))
    acc.Reload()
    records = read_wandb_run(run.path)
    for name in ("epoch", "train/acc_epoch", "train/acc_step"):
        tb = [(e.step, e.value) for e in acc.Scalars(name)]
        assert tb == [(s, pytest.approx(v, rel=1e-6)) for s, v in m[name]], name
        assert records.series(name) == [(s, pytest.approx(v)) for s, v in m[name]], name
    assert len(m["train/acc_epoch"]) == 2


def test_no_epochs_without_a_loader_or_epoch_end(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]) as run:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
        with torch.no_grad():  # only a loader iterated without gradients
            for _batch in DataLoader(_data(), batch_size=4):
                pass
    assert "epoch" not in autolog.read_run(run.path).metrics


def test_the_dataloader_patch_is_removed_with_the_last_run(tmp_path):
    original = vars(DataLoader)["__iter__"]
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]):
        assert vars(DataLoader)["__iter__"] is not original
        assert sum(1 for _ in DataLoader(_data(), batch_size=4)) == BATCHES  # iterates as ever
    assert vars(DataLoader)["__iter__"] is original


# ------------------------------------------------------------------ sync_dist across ranks
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, root, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AUTOLOG_DIST_TIMEOUT="20")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        with autolog.run(project="ddp", dir=root, sinks=["local"], log_every=2) as run:
            for epoch in range(2):
                for i in range(3):
                    autolog.log("v", torch.tensor(float(rank * 10 + epoch * 100 + i)), on_step=False,
                                on_epoch=True, sync_dist=True)
                    autolog.log("hi", float(rank + i), on_step=False, on_epoch=True, reduce="max",
                                sync_dist=True)
                    autolog.log("tick", float(i), step=epoch * 3 + i)
                autolog.epoch_end()
        queue.put((rank, run.path))
    finally:
        dist.destroy_process_group()


def test_sync_dist_reduces_epoch_aggregates_across_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_dist_worker, args=(str(tmp_path), _free_port(), queue), nprocs=WORLD,
                       join=True, start_method="spawn")
    paths = dict(queue.get(timeout=30) for _ in range(WORLD))
    m = autolog.read_run(paths[0]).metrics
    # per rank the epoch mean of rank*10 + epoch*100 + (0, 1, 2); the mean over ranks of those
    assert [v for _, v in m["v"]] == [pytest.approx(e * 100 + 1 + 5) for e in range(2)]
    assert [v for _, v in m["hi"]] == [3.0, 3.0]  # max over ranks of max(rank + i)


def test_autolog_frames_in_a_dataloader_error_are_as_the_readme_says(tmp_path):
    class Boom(DataLoader):
        def _get_iterator(self):
            raise RuntimeError("cannot start")

    class BadData(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise KeyError(i)

    def frames(exc):
        root = os.path.dirname(autolog.__file__) + os.sep
        return [f"{os.path.basename(f.filename)}:{f.name}" for f in
                __import__("traceback").extract_tb(exc.__traceback__) if f.filename.startswith(root)]

    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]):
        with pytest.raises(RuntimeError, match="cannot start") as info:
            iter(Boom(_data()))
        assert frames(info.value) == ["patches.py:_loader_iter"]
        with pytest.raises(KeyError) as info:
            next(iter(DataLoader(BadData(), batch_size=2)))
        assert frames(info.value) == []  # next() is never wrapped


def test_a_no_grad_pass_over_the_training_loader_is_no_epoch(tmp_path):
    def validate(model, epoch):
        with torch.no_grad():  # the accuracy on the training set, with the training loader
            for x, _y in validate.train:
                model(x)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    validate.train = train = DataLoader(_data(), batch_size=4)
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"]) as run:
        for epoch in range(2):
            for x, y in train:
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
            validate(model, epoch)
    assert autolog.read_run(run.path).metrics["epoch"] == [(s, float(s // BATCHES)) for s in range(2 * BATCHES)]


def test_the_training_thread_never_reads_a_value_back(tmp_path, monkeypatch):
    """Epoch detection, on_epoch aggregation and log_histogram do device work only: with every
    way of reading a tensor back failing when autolog calls it on the training thread, the loop
    runs and the values arrive (the writer thread does the one copy per hand-off)."""
    import sys
    import threading

    main = threading.main_thread()
    root = os.path.dirname(autolog.__file__) + os.sep

    def refuse(name):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, **kwargs):  # called by autolog's own code on the training thread
            if threading.current_thread() is main and sys._getframe(1).f_code.co_filename.startswith(root):
                raise AssertionError(f"Tensor.{name} by autolog on the training thread")
            return original(self, *args, **kwargs)

        return guarded

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    dataset = _data()
    with autolog.run(project="ep", dir=str(tmp_path), sinks=["local"], log_every=2) as run:
        with monkeypatch.context() as mp:
            for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"):
                mp.setattr(torch.Tensor, name, refuse(name))
            for _epoch in range(2):
                for x, y in DataLoader(dataset, batch_size=4):
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(loss.detach())
                    autolog.log("l", loss.detach(), on_epoch=True, reduce="max")
                    autolog.log_histogram("x", x)
            run.flush()
    m = autolog.read_run(run.path).metrics
    assert [v for _, v in m["l_epoch"]] == pytest.approx(
        [max(t.item() for t in losses[:BATCHES]), max(t.item() for t in losses[BATCHES:])])
    assert len(autolog.read_run(run.path).histograms["x"]) == 2 * BATCHES
