"""Steps and losses as users count them, checked against values the training programs compute
themselves (their own prints, their own bookkeeping; never autolog's code), on loops shaped like
pytorch/examples (dcgan, word_language_model) with synthetic data. Each loop also runs without
autolog: the weights must be bit-identical."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autolog
from capture_util import batches, open_run, read, series, tiny


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def twice(tmp_path, loop, **options):
    """`loop(run_or_None)` inside a run and without one; (run, its result, plain result)."""
    with open_run(tmp_path, **options) as run:
        got = loop(run)
    plain = loop(None)
    return run, got, plain


# -- one optimizer -------------------------------------------------------------------------------
def test_one_optimizer_loss_and_clip_norm_per_step(tmp_path):
    def loop(run):
        model = tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        losses, norms = {}, {}
        for i, (x, y) in enumerate(batches(6)):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)  # clips: norm > 0.05
            losses[i], norms[i] = float(loss.detach()), float(norm)
            opt.step()
        return model, losses, norms

    run, (model, losses, norms), (plain, _, _) = twice(tmp_path, loop, log_every=4)
    data = read(run)
    assert series(data, "train/loss") == losses
    assert series(data, "train/grad_norm") == norms  # before clipping, what clip_grad_norm_ returned
    assert min(norms.values()) > 0.05
    assert data.meta["step"] == 6
    assert same_weights(model, plain)


def test_clip_grad_norm_imported_by_name_and_with_watch(tmp_path):
    from torch.nn.utils import clip_grad_norm_  # bound before the run: still seen

    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = {}
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, log="gradients")
        for i, (x, y) in enumerate(batches(3)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            norms[i] = float(clip_grad_norm_(model.parameters(), 1e-3))
            opt.step()
    data = read(run)
    assert series(data, "train/grad_norm") == norms
    watched = series(data, "grad_norm/total")  # what the step received: after clipping
    assert all(v == pytest.approx(1e-3, rel=1e-3) for v in watched.values())


def test_get_total_norm_then_clip_grads_with_norm_is_the_steps_grad_norm(tmp_path):
    """torch's split API, as accelerate's clip_grad_norm_ calls it: the norm given to
    clip_grads_with_norm_ is the step's train/grad_norm (torch >= 2.6 has both)."""
    def loop(run):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        norms = {}
        for i, (x, y) in enumerate(batches(4)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            grads = [p.grad for p in model.parameters()]
            total = torch.nn.utils.get_total_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), 1e-3, total)
            norms[i] = float(total)
            opt.step()
        return model, norms

    run, (model, norms), (plain, _) = twice(tmp_path, loop, log_every=2)
    assert series(read(run), "train/grad_norm") == norms
    assert same_weights(model, plain)


# -- gradient accumulation -----------------------------------------------------------------------
def test_accumulation_of_4_with_loss_over_4_is_the_mean_micro_batch_loss(tmp_path):
    accum = 4

    def loop(run):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        means = {}
        data = batches(4 * accum)
        for step in range(4):
            opt.zero_grad()
            micro = []
            for x, y in data[accum * step:accum * (step + 1)]:
                loss = F.mse_loss(model(x), y)
                micro.append(float(loss.detach()))
                (loss / accum).backward()
            means[step] = sum(micro) / accum  # what HF Trainer logs as `loss`
            opt.step()
        return model, means

    run, (model, means), (plain, _) = twice(tmp_path, loop, log_every=2)
    got = series(read(run), "train/loss")
    assert got == pytest.approx(means, rel=1e-6)
    assert same_weights(model, plain)


# -- a GAN (pytorch/examples dcgan's loop) -------------------------------------------------------
class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1)


def dcgan(run, d_first: bool, names: bool = False, iterations: int = 5):
    """dcgan's training loop (update D: real then fake; update G), D or G updated first.
    Returns the models and what the program prints: {iteration: (Loss_D, Loss_G)}."""
    torch.manual_seed(0)
    netG, netD = Generator(), Discriminator()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if names:
        autolog.name_optimizer(optimizerD, "D")
        autolog.name_optimizer(optimizerG, "G")
    g = torch.Generator().manual_seed(1)
    printed = {}
    for i in range(iterations):
        real = torch.randn(4, 8, generator=g)
        noise = torch.randn(4, 3, generator=g)
        fake = netG(noise)

        def update_d():
            netD.zero_grad()
            errD_real = criterion(netD(real), torch.full((4,), 1.0))
            errD_real.backward()
            errD_fake = criterion(netD(fake.detach()), torch.full((4,), 0.0))
            errD_fake.backward()
            optimizerD.step()
            return (errD_real + errD_fake).item()

        def update_g():
            netG.zero_grad()
            errG = criterion(netD(fake), torch.full((4,), 1.0))
            errG.backward()
            optimizerG.step()
            return errG.item()

        if d_first:
            loss_d = update_d()
            loss_g = update_g()
        else:
            loss_g = update_g()
            loss_d = update_d()
        printed[i] = (loss_d, loss_g)  # print('Loss_D: %.4f Loss_G: %.4f' % ...)
    return (netG, netD), printed


@pytest.mark.parametrize("d_first", [True, False], ids=["D-first", "G-first"])
def test_gan_each_optimizer_has_the_loss_the_program_prints(tmp_path, d_first):
    run, (models, printed), (plain, _) = twice(tmp_path, lambda r: dcgan(r, d_first), log_every=2)
    data = read(run)
    loss_d = {i: d for i, (d, _g) in printed.items()}
    loss_g = {i: g for i, (_d, g) in printed.items()}
    # optimizer 0 (the first to step) at the iteration; optimizer 1 one step later (it steps
    # after optimizer 0 completed the iteration's step)
    first, second = (loss_d, loss_g) if d_first else (loss_g, loss_d)
    assert series(data, "train/loss") == pytest.approx(first, rel=1e-6)
    assert series(data, "train/loss/1") == pytest.approx({i + 1: v for i, v in second.items()}, rel=1e-6)
    assert data.meta["step"] == 5
    assert all(same_weights(a, b) for a, b in zip(models, plain))


def test_gan_with_named_optimizers(tmp_path):
    with open_run(tmp_path, log_every=2) as run:
        (netG, netD), printed = dcgan(run, d_first=True, names=True)
    data = read(run)
    assert series(data, "train/loss/D") == pytest.approx({i: d for i, (d, _g) in printed.items()}, rel=1e-6)
    assert series(data, "train/loss/G") == pytest.approx({i + 1: g for i, (_d, g) in printed.items()}, rel=1e-6)
    assert "train/loss" not in data.metrics and "train/loss/1" not in data.metrics
    assert series(data, "optim/D/lr") == {s: 2e-4 for s in range(5)}
    assert series(data, "optim/G/beta1") == {s: 0.5 for s in range(1, 6)}
    assert [(o["index"], o["name"]) for o in data.meta["optimizers"]] == [(0, "D"), (1, "G")]


def test_name_optimizer_checks_its_arguments_and_names_the_watched_total(tmp_path):
    model = tiny()
    with pytest.raises(TypeError, match="optimizer"):
        autolog.name_optimizer(model, "x")
    opt_a = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model[2].parameters(), lr=0.2)
    for bad in ("", "a/b", "3", None):
        with pytest.raises(ValueError, match="name"):
            autolog.name_optimizer(opt_a, bad)
    assert autolog.name_optimizer(opt_b, "head") is opt_b
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, histograms=False)
        for x, y in batches(2):
            for opt in (opt_a, opt_b):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
    data = read(run)
    assert "grad_norm/total" in data.metrics  # the model's first optimizer
    assert "grad_norm/total/head" in data.metrics  # a second one updating the same model
    assert sorted(series(data, "train/loss/head")) == [1, 2]
    assert series(data, "optim/head/lr") == {1: 0.2, 2: 0.2}


# -- a closure optimizer -------------------------------------------------------------------------
def test_lbfgs_loss_is_the_closures_first_value(tmp_path):
    def loop(run):
        model = tiny()
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=20)
        returned, calls = {}, []
        x, y = batches(1)[0]
        for i in range(3):
            count = [0]

            def closure():
                count[0] += 1
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return loss

            returned[i] = float(opt.step(closure))  # LBFGS returns the first evaluation
            calls.append(count[0])
        return model, returned, calls

    run, (model, returned, calls), (plain, _, _) = twice(tmp_path, loop)
    assert max(calls) > 1  # a line search: several evaluations per step
    data = read(run)
    assert series(data, "train/loss") == returned
    assert data.meta["step"] == 3
    assert same_weights(model, plain)


def test_closure_step_sums_backward_calls_before_it(tmp_path):
    """Accumulated micro-batches, then a step whose closure makes the last backward (Lightning's
    automatic optimization with accumulation): the sum of all of them."""
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x1, y1), (x2, y2) = batches(2)
    with open_run(tmp_path) as run:
        first = F.mse_loss(model(x1), y1) / 2
        first.backward()

        def closure():
            loss = F.mse_loss(model(x2), y2) / 2
            loss.backward()
            return loss

        second = opt.step(closure)
    assert series(read(run), "train/loss") == {0: pytest.approx(float(first) + float(second), rel=1e-6)}


# -- no optimizer (pytorch/examples word_language_model's loop) ----------------------------------
class RNNModel(nn.Module):
    def __init__(self, ntoken=20, ninp=8, nhid=8):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return self.decoder(output).view(-1, self.decoder.out_features), hidden


def word_language_model(run, watch: bool, n: int = 7, lr: float = 20.0):
    torch.manual_seed(0)
    model = RNNModel()
    if watch:
        autolog.watch(model, log="all", log_every=1, histograms=False)
    g = torch.Generator().manual_seed(2)
    criterion = nn.NLLLoss()
    losses, norms, grad_norms = {}, {}, {}
    hidden = None
    for batch in range(n):
        data = torch.randint(0, 20, (5, 3), generator=g)  # (bptt, batch size)
        targets = torch.randint(0, 20, (15,), generator=g)
        hidden = None if hidden is None else tuple(h.detach() for h in hidden)  # repackage_hidden
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(F.log_softmax(output, dim=-1), targets)
        loss.backward()
        grad_norms[batch] = float(torch.linalg.vector_norm(model.decoder.weight.grad))
        norms[batch] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25))
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses[batch] = loss.item()
    return model, losses, norms, grad_norms


def test_no_optimizer_each_backward_is_a_step(tmp_path):
    gc.collect()  # optimizers of earlier tests, kept alive by reference cycles, would count
    run, (model, losses, norms, grad_norms), plain = twice(
        tmp_path, lambda r: word_language_model(r, watch=r is not None), log_every=3)
    data = read(run)
    assert data.meta["step"] == 7
    assert series(data, "train/loss") == losses  # one point per batch, at its step
    assert series(data, "train/grad_norm") == norms  # clip_grad_norm_ after the backward: same step
    assert sorted(series(data, "perf/step_time")) == [1, 2, 3, 4, 5, 6]
    assert series(data, "perf/samples_per_sec").keys() == {1, 2, 3, 4, 5, 6}  # forward's input dim 0: 5
    assert series(data, "grad_norm/decoder.weight") == pytest.approx(grad_norms, rel=1e-5)
    ratios = series(data, "update_ratio/decoder.weight")  # the hand-made update of each step
    assert sorted(ratios) == [0, 1, 2, 3, 4, 5] and all(v > 0 for v in ratios.values())
    assert same_weights(model, plain[0])
    assert "optimizers" not in data.meta


def test_an_optimizer_created_later_takes_over_the_steps(tmp_path):
    gc.collect()
    model = tiny()
    data = batches(5)
    with open_run(tmp_path) as run:
        for x, y in data[:2]:  # warm-up by hand: each backward a step
            model.zero_grad()
            F.mse_loss(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
        assert run.step == 2
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = {}
        for x, y in data[2:]:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            losses[run.step] = float(loss.detach())
            opt.step()
        assert run.step == 5
    got = series(read(run), "train/loss")
    assert sorted(got) == [0, 1, 2, 3, 4] and {s: got[s] for s in (2, 3, 4)} == losses


def test_an_optimizer_created_before_the_run_is_seen(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # before the run: no stepless steps
    x, y = batches(1)[0]
    with open_run(tmp_path) as run:
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        assert run.step == 3


# -- AMP -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_grad_scaler_losses_unscaled_and_skipped_steps_record_nothing(tmp_path, dtype):
    def loop(run):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        losses, step = {}, 0
        for i, (x, y) in enumerate(batches(5)):
            with torch.autocast("cpu", dtype=dtype):
                loss = F.mse_loss(model(x).float(), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if i == 2:
                model[0].weight.grad[0, 0] = float("inf")  # this step is skipped by the scaler
            scaler.step(opt)
            scaler.update()
            if i != 2:
                losses[step] = float(loss.detach())
                step += 1
        return model, losses

    run, (model, losses), (plain, _) = twice(tmp_path, loop)
    data = read(run)
    assert series(data, "train/loss") == losses  # unscaled; the skipped step's loss dropped
    assert data.meta["step"] == 4
    assert data.meta["optimizers"][0]["skipped_steps"] == 1
    assert same_weights(model, plain)


# -- torch.compile -------------------------------------------------------------------------------
def test_compiled_model(tmp_path):
    def loop(run):
        torch._dynamo.reset()
        model = tiny()
        compiled = torch.compile(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if run is not None:
            autolog.watch(compiled, log="gradients", log_every=1, histograms=False)
        losses = {}
        for i, (x, y) in enumerate(batches(4)):
            opt.zero_grad()
            loss = F.mse_loss(compiled(x), y)
            loss.backward()
            losses[i] = float(loss.detach())
            opt.step()
        return model, losses

    run, (model, losses), (plain, plain_losses) = twice(tmp_path, loop, log_every=2)
    data = read(run)
    assert series(data, "train/loss") == losses == plain_losses
    assert sorted(series(data, "grad_norm/0.weight")) == [0, 1, 2, 3]
    assert sorted(series(data, "perf/samples_per_sec")) == [1, 2, 3]
    assert same_weights(model, plain)


# -- throughput from the entry submodule ---------------------------------------------------------
class Wrapper(nn.Module):
    """A LightningModule-like holder whose own forward is never called."""

    def __init__(self):
        super().__init__()
        self.model = tiny()


def test_samples_from_an_inner_module_when_the_watched_forward_never_runs(tmp_path):
    holder = Wrapper()
    opt = torch.optim.SGD(holder.parameters(), lr=0.1)
    with open_run(tmp_path) as run:
        autolog.watch(holder, log=None)
        for x, y in batches(4, size=6):
            opt.zero_grad()
            F.mse_loss(holder.model(x), y).backward()
            with torch.no_grad():
                holder.model(x[:2])  # evaluation: not counted
            opt.step()
        # the entry found, only its hook is left
        hooked = [m for m in holder.modules() if m._forward_pre_hooks]
        assert hooked == [holder, holder.model]
    data = read(run)
    step_time = series(data, "perf/step_time")
    throughput = series(data, "perf/samples_per_sec")
    assert sorted(throughput) == [1, 2, 3]
    for step, value in throughput.items():
        assert value == pytest.approx(6 / step_time[step])
    autolog.unwatch(holder)
    assert not any(m._forward_pre_hooks for m in holder.modules())


# -- clip_grad_norm_ on DTensor parameters (FSDP2, tensor parallel) -------------------------------
@pytest.mark.parametrize("placement", ["shard", "replicate"])
def test_clip_grad_norm_of_dtensor_parameters(tmp_path, placement):
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        place = [Shard(0)] if placement == "shard" else [Replicate()]
        torch.manual_seed(0)
        weight = nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, place))
        opt = torch.optim.SGD([weight], lr=0.1)
        x = distribute_tensor(torch.randn(3, 2), mesh, [Replicate()])
        norms = {}
        with open_run(tmp_path) as run:
            for i in range(2):
                opt.zero_grad()
                (weight @ x).sum().backward()
                returned = torch.nn.utils.clip_grad_norm_([weight], 0.5)
                norms[i] = float(returned.full_tensor())
                opt.step()
        got = series(read(run), "train/grad_norm")
        assert got == pytest.approx(norms, rel=1e-6) and min(norms.values()) > 0.5
    finally:
        dist.destroy_process_group()


def test_fsdp_clip_grad_norm_is_recorded_and_unpatched_after(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        original = vars(FSDP)["clip_grad_norm_"]
        model = FSDP(tiny(), device_id=torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        norms = {}
        with open_run(tmp_path) as run:
            for i, (x, y) in enumerate(batches(2)):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                norms[i] = float(model.clip_grad_norm_(1e-3))
                opt.step()
        assert vars(FSDP)["clip_grad_norm_"] is original
        assert series(read(run), "train/grad_norm") == norms
    finally:
        dist.destroy_process_group()


def test_nonfinite_loss_of_a_second_optimizer_is_found(tmp_path):
    model_a, model_b = tiny(), tiny(seed=1)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    with pytest.warns(autolog.capture.errors.NonFiniteWarning, match="step 2"):
        with open_run(tmp_path, log_every=2) as run:
            for i, (x, y) in enumerate(batches(4)):
                for model, opt, bad in ((model_a, opt_a, False), (model_b, opt_b, i == 1)):
                    opt.zero_grad()
                    loss = F.mse_loss(model(x), y) * (float("nan") if bad else 1.0)
                    loss.backward()
                    opt.step()
    assert read(run).meta["nonfinite"] == {"step": 2, "parameter": None, "loss": True}


def test_no_optimizer_nonfinite_raise_comes_from_the_backward_of_the_hand_off(tmp_path):
    gc.collect()
    model = tiny()
    with pytest.raises(autolog.NonFiniteError) as caught:
        with open_run(tmp_path, log_every=2) as run:
            autolog.watch(model, on_nan="raise")
            for i, (x, y) in enumerate(batches(4)):
                model.zero_grad()
                loss = F.mse_loss(model(x), y) * (float("nan") if i == 0 else 1.0)
                loss.backward()  # step i; the hand-off after step 1 finds step 0's NaN
    assert caught.value.step == 0 and run.step == 2
    assert read(run).status == "failed"


def test_naming_in_an_open_run_and_a_name_used_twice(tmp_path):
    model = tiny()
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model.parameters(), lr=0.2)
    autolog.name_optimizer(opt_b, "same")
    x, y = batches(1)[0]
    with open_run(tmp_path) as run:
        for i in range(3):
            if i == 1:
                autolog.name_optimizer(opt_a, "main")  # from its next step on
            for opt in (opt_a, opt_b):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
        opt_c = autolog.name_optimizer(torch.optim.SGD(model.parameters(), lr=0.3), "same")
        with pytest.warns(UserWarning, match="named 'same'"):
            F.mse_loss(model(x), y).backward()
            opt_c.step()
    data = read(run)
    assert sorted(series(data, "train/loss")) == [0] and sorted(series(data, "train/loss/main")) == [1, 2]
    assert sorted(series(data, "optim/main/lr")) == [1, 2]
    assert sorted(series(data, "train/loss/same")) == [1, 2, 3]
    assert series(data, "optim/2/lr") == {3: 0.3}  # the second 'same' keeps its index


def test_no_optimizer_steps_also_without_loss_capture(tmp_path):
    gc.collect()
    model = tiny()
    with open_run(tmp_path, capture=["timing"]) as run:
        for x, y in batches(3):
            model.zero_grad()
            F.mse_loss(model(x), y).backward()
        assert run.step == 3
    data = read(run)
    assert "train/loss" not in data.metrics and sorted(series(data, "perf/step_time")) == [1, 2]


def test_low_precision_losses_are_summed_in_float32(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = []
    with open_run(tmp_path) as run:
        for x, y in batches(8):
            scaled = (F.mse_loss(model(x), y) / 8).bfloat16()  # a bf16 loss
            parts.append(scaled.detach().float())
            scaled.backward()
        opt.step()
    expected = parts[0]
    for p in parts[1:]:
        expected = expected + p  # in float32, in order
    naive = parts[0].bfloat16()
    for p in parts[1:]:
        naive = naive + p.bfloat16()  # what summing in the loss's own dtype would give
    assert float(naive) != pytest.approx(float(expected), rel=1e-6)  # bf16 sums would lose digits
    assert series(read(run), "train/loss")[0] == pytest.approx(float(expected), rel=1e-6)
