"""Small deterministic training programs whose recorded series are pinned by golden data.

Each program is a function ``program(run_dir) -> run_path``: it builds a tiny seeded model on
the CPU, trains it for a few dozen steps under ``autolog.run(dir=run_dir, sinks=["local"],
log_every=...)`` and returns the run's directory (for ``autolog.read_run``). Everything they do
is deterministic: seeded parameters, data from private ``torch.Generator``s, one intra-op
thread while they run, no wall-clock input.

`summarize(path)` turns a stored run into the plain JSON-able structure the goldens hold
(``tests/data/reference_series.json``, written by ``tests/make_reference_series.py`` from the
capture code of commit 5de25b3), and `tests/test_capture_reference.py` checks that the code of
today records the same thing.

Programs (`PROGRAMS`, by name):

- ``sgd_momentum_watch_all``: one SGD(momentum) optimizer, ``watch(model, log="all")`` (norms,
  update ratios, histograms of gradients and parameters), dropout (global RNG), user values.
- ``gan_two_optimizers``: D and G, each with its Adam; D takes two backward calls a step (real,
  fake), G one; G's optimizer named ``"gen"`` with `autolog.name_optimizer`; both watched.
- ``lbfgs_closure``: ``LBFGS.step(closure)`` (several closure calls a step).
- ``sgd_closure``: plain SGD with ``step(closure)``.
- ``grad_accumulation``: ``loss / 4`` over 4 micro-batches, one optimizer step.
- ``lambda_lr_and_group_edits``: LambdaLR changes lr every step; momentum and weight decay are
  changed mid-run by editing ``param_groups``.
- ``onecycle_adamw``: OneCycleLR on AdamW (lr and beta1 change every step).
- ``param_groups``: three param groups with different lr / momentum / weight decay.
- ``grad_scaler_skip``: ``torch.amp.GradScaler("cpu")`` in float32, with a batch whose
  gradients are made infinite so the scaler skips that step and halves its scale.
- ``clip_grad_norm``: ``clip_grad_norm_`` every step (``train/grad_norm``).
- ``stepless``: no optimizer, backward only (each backward is a step).
- ``adam_gradients`` / ``adam_parameters``: Adam with ``watch(log="gradients")`` /
  ``watch(log="parameters")``.
- ``user_logs``: `autolog.log` in its forms (dict, name/value, name/dict, tensors, explicit
  steps, ``on_epoch`` aggregates, `epoch_end`) mixed with captured series.
- ``nan_grad_param``: a tensor hook makes ``2.weight``'s gradient NaN at step 6.
- ``nan_loss``: the loss is NaN at step 5.
- ``inf_input``: one input element is +inf at step 7.

The three NaN/Inf programs watch with the default ``on_nan="warn"`` (the warning is swallowed
here; what is pinned is ``meta["nonfinite"]``), and put the weights and optimizer state back
after the bad step so that the later steps carry finite values again.
"""
from __future__ import annotations

import contextlib
import gc
import copy
import math
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import autolog

PROJECT = "reference"

# Series whose values depend on the clock: their names and steps are pinned, not their values.
TIMING_PREFIXES = ("perf/",)


def is_timing(name: str) -> bool:
    return name.startswith(TIMING_PREFIXES)


# -- helpers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One intra-op thread while a program runs (put back after); warnings swallowed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # NonFiniteWarning (on_nan="warn") and the like: what is pinned is meta["nonfinite"]
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)


def _open(run_dir: str, log_every: int, name: str) -> Any:
    return autolog.run(project=PROJECT, name=name, dir=str(run_dir), sinks=["local"], log_every=log_every)


def _mlp(seed: int, sizes: tuple[int, ...] = (4, 8, 2), dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _batches(n: int, size: int = 6, dims: tuple[int, int] = (4, 2),
             seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, dims[0], generator=g), torch.randn(size, dims[1], generator=g)) for _ in range(n)]


class _Snapshot:
    """The weights and optimizer state before a bad step, to put back after it."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model = model
        self.opt = opt
        self.weights = copy.deepcopy(model.state_dict())
        self.state = copy.deepcopy(opt.state_dict())

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        self.opt.load_state_dict(self.state)


# -- programs --------------------------------------------------------------------------------


def _fit(model: nn.Module, opt: Any, data: list, sched: Any = None) -> None:
    """The programs' plain loop: forward, zero_grad, backward, step (and the scheduler's step)."""
    for x, y in data:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()

def sgd_momentum_watch_all(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(0, (4, 8, 2), dropout=0.25)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with _open(run_dir, 4, "sgd_momentum_watch_all") as run:
            autolog.watch(model, log="all")
            for i, (x, y) in enumerate(_batches(22)):
                loss = F.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i % 3 == 0:
                    autolog.log({"user/i": float(i)})
        return run.path


def gan_two_optimizers(run_dir: str) -> str:
    with _deterministic():
        disc = _mlp(10, (3, 8, 1))
        gen = _mlp(11, (2, 8, 3))
        opt_d = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.999))
        opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
        autolog.name_optimizer(opt_g, "gen")
        g = torch.Generator().manual_seed(12)
        with _open(run_dir, 4, "gan_two_optimizers") as run:
            autolog.watch(disc, log="all", name="D")
            autolog.watch(gen, log="gradients", name="G")
            for i in range(18):
                real = torch.randn(8, 3, generator=g) * 0.5 + 1.0
                z = torch.randn(8, 2, generator=g)
                fake = gen(z)
                # D: two backward calls (real, then fake), one step
                opt_d.zero_grad()
                loss_real = F.binary_cross_entropy_with_logits(disc(real), torch.ones(8, 1))
                loss_real.backward()
                loss_fake = F.binary_cross_entropy_with_logits(disc(fake.detach()), torch.zeros(8, 1))
                loss_fake.backward()
                opt_d.step()
                # G: one backward through D, one step
                opt_g.zero_grad()
                loss_g = F.binary_cross_entropy_with_logits(disc(fake), torch.ones(8, 1))
                loss_g.backward()
                opt_g.step()
                autolog.log("gan", {"d_real": loss_real, "d_fake": loss_fake})
        return run.path


def _closure(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The closure a step(closure) optimizer calls: zero_grad, forward, backward, the loss."""
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss
    return closure


def lbfgs_closure(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(20, (4, 6, 2))
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
        data = _batches(12, seed=21)
        with _open(run_dir, 4, "lbfgs_closure") as run:
            autolog.watch(model, log="all")
            for x, y in data:
                opt.step(_closure(model, opt, x, y))
        return run.path


def sgd_closure(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(30, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = _batches(15, seed=31)
        with _open(run_dir, 7, "sgd_closure") as run:
            autolog.watch(model, log="gradients")
            for x, y in data:
                returned = opt.step(_closure(model, opt, x, y))
                autolog.log("user/closure_loss", returned)
        return run.path


def grad_accumulation(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(40, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8)
        accum = 4
        data = _batches(12 * accum, size=3, seed=41)
        with _open(run_dir, 4, "grad_accumulation") as run:
            autolog.watch(model, log="all")
            opt.zero_grad()
            for i, (x, y) in enumerate(data):
                loss = F.mse_loss(model(x), y) / accum
                loss.backward()
                if (i + 1) % accum == 0:
                    opt.step()
                    opt.zero_grad()
        return run.path


def lambda_lr_and_group_edits(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(50, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.93 ** s)
        with _open(run_dir, 7, "lambda_lr_and_group_edits") as run:
            autolog.watch(model, log="parameters")
            for i, (x, y) in enumerate(_batches(24, seed=51)):
                if i == 9:
                    opt.param_groups[0]["momentum"] = 0.5
                    opt.param_groups[0]["weight_decay"] = 1e-3
                if i == 17:
                    opt.param_groups[0]["weight_decay"] = 0.01
                loss = F.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        return run.path


def onecycle_adamw(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(55, (4, 8, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20, cycle_momentum=True,
                                                    base_momentum=0.8, max_momentum=0.95)
        with _open(run_dir, 4, "onecycle_adamw") as run:
            _fit(model, opt, _batches(20, seed=56), sched)
        return run.path


def param_groups(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(60, (4, 8, 8, 2))
        opt = torch.optim.SGD([
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": 0.02, "momentum": 0.5},
            {"params": model[4].parameters(), "lr": 0.005, "weight_decay": 1e-2},
        ], lr=0.1, momentum=0.9)
        with _open(run_dir, 7, "param_groups") as run:
            autolog.watch(model, log="all")
            _fit(model, opt, _batches(21, seed=61))
        return run.path


def grad_scaler_skip(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(70, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_factor=2.0, backoff_factor=0.5,
                                      growth_interval=3)
        with _open(run_dir, 4, "grad_scaler_skip") as run:
            autolog.watch(model, log="all")
            for i, (x, y) in enumerate(_batches(16, seed=71)):
                loss = F.mse_loss(model(x), y)
                handle = None
                if i == 6:  # this batch's gradients overflow: the scaler skips the step
                    handle = model[2].weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
                opt.zero_grad()
                scaler.scale(loss).backward()
                if handle is not None:
                    handle.remove()
                scaler.step(opt)
                scaler.update()
                autolog.log("amp/scale", scaler.get_scale())
        return run.path


def clip_grad_norm(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(80, (4, 16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        with _open(run_dir, 4, "clip_grad_norm") as run:
            autolog.watch(model, log="gradients")
            for x, y in _batches(14, seed=81):
                loss = F.mse_loss(model(x), y * 3.0)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
                opt.step()
        return run.path


def stepless(run_dir: str) -> str:
    gc.collect()  # optimizers of earlier tests, kept alive by reference cycles, would make it stepful
    with _deterministic():
        model = _mlp(90, (4, 8, 2))
        with _open(run_dir, 4, "stepless") as run:
            autolog.watch(model, log="all")
            for i, (x, y) in enumerate(_batches(13, seed=91)):
                model.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                with torch.no_grad():  # a hand-written update: no optimizer
                    for p in model.parameters():
                        p.sub_(0.05 * p.grad)
                if i % 2 == 0:
                    autolog.log({"user/even": float(i) / 2})
        return run.path


def _adam(run_dir: str, log: str, name: str, seed: int) -> str:
    with _deterministic():
        model = _mlp(seed, (4, 8, 2))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        with _open(run_dir, 7, name) as run:
            autolog.watch(model, log=log)
            _fit(model, opt, _batches(22, seed=seed + 1))
        return run.path


def adam_gradients(run_dir: str) -> str:
    return _adam(run_dir, "gradients", "adam_gradients", 100)


def adam_parameters(run_dir: str) -> str:
    return _adam(run_dir, "parameters", "adam_parameters", 110)


def user_logs(run_dir: str) -> str:
    with _deterministic():
        model = _mlp(120, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        data = _batches(8, seed=121)
        with _open(run_dir, 4, "user_logs") as run:
            for epoch in range(3):
                for i, (x, y) in enumerate(data):
                    out = model(x)
                    loss = F.mse_loss(out, y)
                    autolog.log({"user/loss_before_step": loss, "user/epoch": epoch})
                    autolog.log("user/mean_out", out.mean(), on_step=True, on_epoch=True)
                    autolog.log("user/loss_epoch_only", loss, on_step=False, on_epoch=True, reduce="max")
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    autolog.log("metrics", {"abs_out": out.detach().abs().mean(), "i": i})
                    if i == 5:
                        autolog.log("user/explicit_step", 0.125 * (epoch + 1), step=1000 + epoch)
                autolog.log({"val/acc": torch.tensor(0.5 + 0.1 * epoch)})
                autolog.epoch_end()
        return run.path


def _nonfinite_run(run_dir: str, name: str, seed: int, bad: int, how: str, log_every: int) -> str:
    with _deterministic():
        model = _mlp(seed, (4, 8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with _open(run_dir, log_every, name) as run:
            autolog.watch(model)  # log="gradients", on_nan="warn"
            for i, (x, y) in enumerate(_batches(16, seed=seed + 1)):
                snapshot = _Snapshot(model, opt) if i == bad else None
                handle = None
                if i == bad and how == "input":
                    x = x.clone()
                    x[2, 1] = math.inf
                loss = F.mse_loss(model(x), y)
                if i == bad and how == "loss":
                    loss = loss * math.nan
                if i == bad and how == "grad":
                    handle = model[2].weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
                opt.zero_grad()
                loss.backward()
                if handle is not None:
                    handle.remove()
                opt.step()
                if snapshot is not None:  # put back what the bad step did, so later steps are finite
                    snapshot.restore()
        return run.path


def nan_grad_param(run_dir: str) -> str:
    return _nonfinite_run(run_dir, "nan_grad_param", 130, 6, "grad", 4)


def nan_loss(run_dir: str) -> str:
    return _nonfinite_run(run_dir, "nan_loss", 140, 5, "loss", 4)


def inf_input(run_dir: str) -> str:
    return _nonfinite_run(run_dir, "inf_input", 150, 7, "input", 7)


PROGRAMS: dict[str, Callable[[str], str]] = {fn.__name__: fn for fn in (
    sgd_momentum_watch_all, gan_two_optimizers, lbfgs_closure, sgd_closure, grad_accumulation,
    lambda_lr_and_group_edits, onecycle_adamw, param_groups, grad_scaler_skip, clip_grad_norm,
    stepless, adam_gradients, adam_parameters, user_logs, nan_grad_param, nan_loss, inf_input)}


# -- what is pinned --------------------------------------------------------------------------

def summarize(path: str) -> dict[str, Any]:
    """A stored run as the golden structure (plain lists and dicts; floats as stored):

    - ``names``: every scalar series name (timing ones included), sorted;
    - ``series``: name -> [[step, value], ...] for every series but the timing ones;
    - ``timing_steps``: timing series name -> [step, ...] (values depend on the clock);
    - ``histograms``: name -> [[step, edges, counts], ...];
    - ``nonfinite``: ``meta["nonfinite"]`` (None when absent);
    - ``optimizers``: ``meta["optimizers"]`` (None when absent);
    - ``status``: the run's status.
    """
    data = autolog.read_run(path)
    series, timing = {}, {}
    for name in sorted(data.metrics):
        points = data.metrics[name]
        if is_timing(name):
            timing[name] = [int(step) for step, _ in points]
        else:
            series[name] = [[int(step), float(value)] for step, value in points]
    histograms = {name: [[int(step), [float(e) for e in edges], [float(c) for c in counts]]
                         for step, edges, counts in data.histograms[name]]
                  for name in sorted(data.histograms)}
    return {
        "names": sorted(data.metrics),
        "series": series,
        "timing_steps": timing,
        "histograms": histograms,
        "nonfinite": data.meta.get("nonfinite"),
        "optimizers": data.meta.get("optimizers"),
        "status": data.status,
    }
