"""Per-step cost of experiment logging: one training loop, with and without each logging tool.

    python -m benchmarks.overhead [--model tiny small] [--steps N] [--rounds R] [--window W]
                                  [--device cpu|cuda] [--configs NAME ...] [--json OUT]
    python -m benchmarks.overhead --dist fsdp [--steps N] [--rounds R] [--window W]   (FSDP2, 2 CPU ranks:
                                  benchmarks/overhead_dist.py)

Every configuration trains the same seeded model on the same batch with the same loop
(`Loop.run`); only what the configuration adds differs. Each round runs every configuration
once, in this process, in a new random (seeded) order each round: a fresh model, the
configuration's setup (untimed), `W` warm-up steps, then `N / W` timed windows of `W` steps,
then its teardown (untimed). A configuration's time per step in a round is the median of its
windows; its overhead is its time over the baseline's (`plain`) in the *same* round, and the
table gives the median over rounds with the range. ``plain-again`` is `plain` measured twice:
its overhead is the noise of the measurement.

Configurations (`--configs` picks some by name; `plain` is always measured):
plain, plain-again, plain+item (a ``loss.item()`` per step), tensorboard-manual
(``SummaryWriter.add_scalar`` of loss and lr every step, ``add_histogram`` of every parameter and
gradient every 100 steps), wandb-offline (``wandb.init(mode="offline")``, ``run.watch(model,
log="all", log_freq=100)``, ``run.log`` of loss and lr every step; system metrics off),
autolog-disabled (``mode="disabled"``, with ``watch``), autolog-track (loss, optimizer, step time:
no call in the loop), autolog-watch-gradients, autolog-watch-all, each autolog one at
``log_every=100`` with the local sink and with local + TensorBoard; autolog-track+epochs [local]
(autolog-track plus ``autolog.log(loss, on_epoch=True)`` every step and an epoch end every 250
steps: the ``epoch`` series and the device-side epoch aggregation); and, when Lightning is
installed, lightning (the same model and optimizer as a ``LightningModule``, no logger),
lightning+self.log (``self.log`` of the loss every step, Lightning's default logger) and
lightning+self.log+autolog (the same with ``logger=False`` and autolog's ``AutologCallback``:
local sink, no watch), whose overheads are against ``lightning`` because its loop differs.

On ``--device cuda`` the table also counts the host-device synchronisations per step of the
training thread (``torch.cuda.set_sync_debug_mode("warn")`` over one extra window).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from benchmarks.common import describe, finish, machine, median, table

LOG_EVERY = 100  # autolog's log_every, TensorBoard's histogram period, wandb.watch's log_freq


# ---------------------------------------------------------------------------------- workloads
@dataclasses.dataclass(frozen=True)
class Workload:
    """An MLP: `layers` are the widths from input to classes; one fixed batch."""

    name: str
    layers: tuple[int, ...]
    batch: int
    steps: int  # default timed steps per configuration and round
    unit: str  # how its overhead is reported: "us" (added µs/step) or "%"

    def build(self, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        mods: list[torch.nn.Module] = []
        with device:  # parameters created (and initialised) on the device
            for i, (a, b) in enumerate(zip(self.layers, self.layers[1:])):
                mods.append(torch.nn.Linear(a, b))
                if i < len(self.layers) - 2:
                    mods.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*mods)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(self.batch, self.layers[0], device=device)
        y = torch.randint(0, self.layers[-1], (self.batch,), device=device)
        return model, opt, x, y

    def params(self) -> int:
        return sum(a * b + b for a, b in zip(self.layers, self.layers[1:]))


WORKLOADS = {
    # the fixed per-step cost dominates: report added µs/step
    "tiny": Workload("tiny", (32, 64, 10), 32, 2000, "us"),
    # ~1-3 ms per step on one CPU thread: report %
    "small": Workload("small", (256, 320, 320, 320, 10), 64, 1000, "%"),
    # ~50M parameters, for a GPU
    "large": Workload("large", (4096, 4096, 4096, 4096, 10), 512, 1000, "%"),
}


# ---------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Hooks:
    """What a configuration adds to the loop (None: nothing)."""

    after_backward: Callable[[int, torch.Tensor], None] | None = None
    after_step: Callable[[int, torch.Tensor], None] | None = None
    settle: Callable[[], None] | None = None  # called once after the warm-up, untimed
    check: Callable[[], None] | None = None  # called after teardown: did it log anything?


@dataclasses.dataclass
class Ctx:
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    tmp: str
    device: torch.device


class Loop:
    """The training loop every configuration runs."""

    def __init__(self, ctx: Ctx, hooks: Hooks) -> None:
        self.ctx, self.hooks, self.step = ctx, hooks, 0

    def run(self, n: int) -> None:
        model, opt, x, y = self.ctx.model, self.ctx.opt, self.ctx.x, self.ctx.y
        after_backward, after_step = self.hooks.after_backward, self.hooks.after_step
        step = self.step
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if after_backward is not None:
                after_backward(step, loss)
            opt.step()
            if after_step is not None:
                after_step(step, loss)
            step += 1
        self.step = step


# ---------------------------------------------------------------------------------- syncs
class SyncCounter:
    """Counts the synchronising CUDA calls the training (this) thread makes while on."""

    def __init__(self) -> None:
        self.count = 0
        self._catch: Any = None

    def start(self) -> None:
        self.count = 0
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        me = threading.get_ident()

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if threading.get_ident() == me and "synchroniz" in str(message):
                self.count += 1

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> int:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(None, None, None)
        return self.count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children() -> list[int]:
    """pids of this process's descendants (wandb's service, ...), Linux only."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [os.getpid()]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def cpu_seconds(children: Sequence[int]) -> float:
    """CPU time of this process (all threads) and of `children` so far."""
    total = time.process_time()
    for pid in children:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            pass
    return total


# ---------------------------------------------------------------------------------- configurations
@dataclasses.dataclass
class Sample:
    """One configuration in one round."""

    windows: list[float]  # seconds per step, per timed window
    setup_s: float
    teardown_s: float
    cpu_per_step: float  # CPU seconds per timed step: this process's threads and its children
    syncs_per_step: float | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    measure: Callable[[Ctx, int, int, int], Sample]
    baseline: str = "plain"
    group: str = "main"


def hooked(factory: Callable[[Ctx], Any]) -> Callable[[Ctx, int, int, int], Sample]:
    """A `measure` for a configuration given as a context manager yielding `Hooks`."""

    def measure(ctx: Ctx, warmup: int, windows: int, window: int) -> Sample:
        t0 = time.perf_counter()
        cm = factory(ctx)
        hooks = cm.__enter__()
        try:
            loop = Loop(ctx, hooks)
            setup = time.perf_counter() - t0
            loop.run(warmup)
            if hooks.settle is not None:
                hooks.settle()
            times = []
            children = _children()
            _sync(ctx.device)
            cpu0 = cpu_seconds(children)
            for _ in range(windows):
                _sync(ctx.device)
                t = time.perf_counter()
                loop.run(window)
                _sync(ctx.device)
                times.append((time.perf_counter() - t) / window)
            cpu = (cpu_seconds(children) - cpu0) / (windows * window)
            syncs = None
            if ctx.device.type == "cuda":
                counter = SyncCounter()
                counter.start()
                try:
                    loop.run(window)
                finally:
                    syncs = counter.stop() / window
        except BaseException:
            cm.__exit__(*sys.exc_info())
            raise
        t1 = time.perf_counter()
        cm.__exit__(None, None, None)
        teardown = time.perf_counter() - t1
        if hooks.check is not None:
            hooks.check()
        return Sample(times, setup, teardown, cpu, syncs)

    return measure


@contextlib.contextmanager
def plain(ctx: Ctx) -> Iterator[Hooks]:
    yield Hooks()


@contextlib.contextmanager
def plain_item(ctx: Ctx) -> Iterator[Hooks]:
    total = [0.0]

    def after_step(step: int, loss: torch.Tensor) -> None:
        total[0] += loss.item()

    yield Hooks(after_step=after_step)


@contextlib.contextmanager
def tensorboard_manual(ctx: Ctx) -> Iterator[Hooks]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(ctx.tmp, "tb"))
    named = list(ctx.model.named_parameters())
    opt = ctx.opt

    def after_backward(step: int, loss: torch.Tensor) -> None:
        if step % LOG_EVERY == 0:
            for name, p in named:
                writer.add_histogram(f"parameters/{name}", p, step)
                writer.add_histogram(f"gradients/{name}", p.grad, step)

    def after_step(step: int, loss: torch.Tensor) -> None:
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("optim/lr", opt.param_groups[0]["lr"], step)

    try:
        yield Hooks(after_backward=after_backward, after_step=after_step)
    finally:
        writer.close()


def _quiet_wandb() -> None:
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("wandb").setLevel(logging.ERROR)


@contextlib.contextmanager
def wandb_offline(ctx: Ctx) -> Iterator[Hooks]:
    _quiet_wandb()
    import wandb

    run = wandb.init(project="bench", mode="offline", dir=ctx.tmp,
                     settings=wandb.Settings(x_disable_stats=True))
    run.watch(ctx.model, log="all", log_freq=LOG_EVERY)
    opt = ctx.opt

    def after_step(step: int, loss: torch.Tensor) -> None:
        run.log({"train/loss": loss.item(), "optim/lr": opt.param_groups[0]["lr"]})

    try:
        yield Hooks(after_step=after_step)
    finally:
        run.unwatch(ctx.model)
        run.finish()


EPOCH_STEPS = 250  # autolog-track+epochs: an epoch ends every this many steps


def autolog_config(sinks: Sequence[str], watch: str | None = None, mode: str | None = None,
                   epochs: bool = False):
    """`epochs`: also ``autolog.log`` of the loss tensor with ``on_epoch=True`` every step and
    an epoch end every `EPOCH_STEPS` steps (what a DataLoader's new pass does), so the ``epoch``
    series and the device-side aggregation are on the hot path."""
    @contextlib.contextmanager
    def config(ctx: Ctx) -> Iterator[Hooks]:
        import autolog

        with autolog.run(project="bench", dir=os.path.join(ctx.tmp, "runs"), sinks=list(sinks),
                         log_every=LOG_EVERY, mode=mode) as run:
            if watch:
                autolog.watch(ctx.model, log=watch)

            def check() -> None:
                if mode == "disabled":
                    return
                metrics = autolog.read_run(run.path).metrics
                assert "train/loss" in metrics and "optim/lr" in metrics, sorted(metrics)
                if watch in ("gradients", "all"):
                    assert "grad_norm/total" in metrics, sorted(metrics)
                if watch == "all":
                    assert any(k.startswith("update_ratio/") for k in metrics), sorted(metrics)
                if epochs:
                    assert {"train/mse_epoch", "train/mse_step"} <= set(metrics), sorted(metrics)

            after_step = None
            if epochs:
                def after_step(step: int, loss: torch.Tensor) -> None:
                    autolog.log("train/mse", loss.detach(), on_epoch=True)
                    if step % EPOCH_STEPS == EPOCH_STEPS - 1:
                        autolog.epoch_end()

            yield Hooks(after_step=after_step, settle=lambda: run.flush(wait=True), check=check)

    return config


# -- Lightning: its own loop, timed from a callback ---------------------------------------------
def lightning_config(log: bool, logger: bool = True, autolog_callback: bool = False
                     ) -> Callable[[Ctx, int, int, int], Sample]:
    """`self.log` of the loss every step when `log`; Lightning's default logger when `logger`;
    autolog's `AutologCallback` (no watch, local sink, log_every=100) when `autolog_callback`."""

    def measure(ctx: Ctx, warmup: int, windows: int, window: int) -> Sample:
        import lightning as L

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        model, opt, device = ctx.model, ctx.opt, ctx.device
        counted = window if device.type == "cuda" else 0
        total = warmup + windows * window + counted
        marks: list[float] = []
        cpu: list[float] = []
        children: list[int] = []
        counter = SyncCounter()
        t0 = time.perf_counter()

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = F.cross_entropy(self.model(x), y)
                if log:
                    self.log("train/loss", loss)
                return loss

            def configure_optimizers(self) -> Any:
                return opt

        class Clock(L.Callback):
            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
                if idx == 0:
                    marks.append(time.perf_counter())  # end of setup
                if idx == warmup + windows * window and counted:
                    counter.start()

            def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
                done = idx + 1
                if done >= warmup and (done - warmup) % window == 0 and done <= warmup + windows * window:
                    _sync(device)
                    if done == warmup:
                        children[:] = _children()
                        cpu.append(cpu_seconds(children))
                    marks.append(time.perf_counter())
                    if done == warmup + windows * window:
                        cpu.append(cpu_seconds(children))
                if counted and done == total:
                    counter.stop()

        class Batches:
            def __iter__(self):
                for _ in range(total):
                    yield ctx.x, ctx.y

            def __len__(self) -> int:
                return total

        callbacks: list[Any] = [Clock()]
        if autolog_callback:
            from autolog.integrations.lightning import AutologCallback

            callbacks.append(AutologCallback(project="bench", dir=os.path.join(ctx.tmp, "runs"),
                                             sinks=["local"], log_every=LOG_EVERY, watch=None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=total,
                max_epochs=1, logger=bool(log and logger), default_root_dir=ctx.tmp,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                callbacks=callbacks, num_sanity_val_steps=0)
            trainer.fit(Module(), train_dataloaders=Batches())
        end = time.perf_counter()
        setup = marks[0] - t0
        bounds = marks[1:]
        times = [(b - a) / window for a, b in zip(bounds, bounds[1:])]
        if log and logger and not trainer.logger:
            raise RuntimeError("lightning+self.log: Lightning found no default logger")
        if autolog_callback:
            import autolog

            metrics = autolog.read_run(callbacks[1].run.path).metrics
            assert "train/loss" in metrics, sorted(metrics)
        return Sample(times, setup, end - bounds[-1], (cpu[1] - cpu[0]) / (windows * window),
                      counter.count / window if counted else None)

    return measure


def configurations() -> list[Config]:
    configs = [
        Config("plain", hooked(plain)),
        Config("plain-again", hooked(plain)),
        Config("plain+item", hooked(plain_item)),
        Config("tensorboard-manual", hooked(tensorboard_manual)),
        Config("wandb-offline", hooked(wandb_offline)),
        Config("autolog-disabled", hooked(autolog_config(["local"], watch="all", mode="disabled"))),
    ]
    for label, sinks in (("local", ["local"]), ("local+tb", ["local", "tensorboard"])):
        configs += [
            Config(f"autolog-track [{label}]", hooked(autolog_config(sinks))),
            Config(f"autolog-watch-gradients [{label}]", hooked(autolog_config(sinks, watch="gradients"))),
            Config(f"autolog-watch-all [{label}]", hooked(autolog_config(sinks, watch="all"))),
        ]
    configs.append(Config("autolog-track+epochs [local]", hooked(autolog_config(["local"], epochs=True))))
    try:
        import importlib.util

        has_lightning = importlib.util.find_spec("lightning") is not None
    except (ImportError, ValueError):
        has_lightning = False
    if has_lightning:
        configs += [Config("lightning", lightning_config(log=False), group="lightning"),
                    Config("lightning+self.log", lightning_config(log=True), baseline="lightning",
                           group="lightning"),
                    Config("lightning+self.log+autolog", lightning_config(log=True, logger=False, autolog_callback=True),
                           baseline="lightning", group="lightning")]
    return configs


# ---------------------------------------------------------------------------------- driver
def run_rounds(workload: Workload, configs: list[Config], device: torch.device, steps: int,
               rounds: int, window: int, progress: Callable[[str], None]) -> dict[str, list[Sample]]:
    """Every configuration once per round, in a fresh (seeded) random order each round, so that
    no configuration always follows the same one (whose teardown may still be settling)."""
    samples: dict[str, list[Sample]] = {c.name: [] for c in configs}
    windows = max(1, steps // window)
    rng = random.Random(0)
    for r in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for config in order:
            model, opt, x, y = workload.build(device)
            with tempfile.TemporaryDirectory(prefix="autolog-bench-", ignore_cleanup_errors=True) as tmp:
                ctx = Ctx(model, opt, x, y, tmp, device)
                gc.collect()
                samples[config.name].append(config.measure(ctx, window, windows, window))
            del model, opt, ctx
        progress(f"{workload.name}: round {r + 1}/{rounds} done")
    return samples


STATS = {"q20": 0.20, "median": 0.50}


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q=0.5: the median)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarise(configs: list[Config], samples: dict[str, list[Sample]], stat: str) -> list[dict[str, Any]]:
    """Per configuration: its time per step in each round (the `stat` of its windows), and its
    overhead against its baseline in the same round; medians over rounds and ranges."""
    q = STATS[stat]
    rows = []
    for c in configs:
        own, base = samples[c.name], samples[c.baseline]
        per_round = [quantile(s.windows, q) for s in own]
        base_round = [quantile(s.windows, q) for s in base]
        ratios = [a / b - 1.0 for a, b in zip(per_round, base_round)]
        added = [a - b for a, b in zip(per_round, base_round)]
        cpu_added = [a.cpu_per_step - b.cpu_per_step for a, b in zip(own, base)]
        cpu_ratios = [a.cpu_per_step / b.cpu_per_step - 1.0 for a, b in zip(own, base)]
        syncs = [s.syncs_per_step for s in own if s.syncs_per_step is not None]
        rows.append({
            "config": c.name, "baseline": c.baseline, "group": c.group,
            "step_us": median(per_round) * 1e6,
            "added_us": median(added) * 1e6, "added_us_min": min(added) * 1e6, "added_us_max": max(added) * 1e6,
            "overhead": median(ratios), "overhead_min": min(ratios), "overhead_max": max(ratios),
            "cpu_us": median([s.cpu_per_step for s in own]) * 1e6,
            "cpu_added_us": median(cpu_added) * 1e6, "cpu_overhead": median(cpu_ratios),
            "setup_s": median([s.setup_s for s in own]),
            "teardown_s": median([s.teardown_s for s in own]),
            "syncs_per_step": median(syncs) if syncs else None,
            "round_step_us": [v * 1e6 for v in per_round],
            "round_median_us": [median(s.windows) * 1e6 for s in own],
            "round_q20_us": [quantile(s.windows, 0.2) * 1e6 for s in own],
        })
    return rows


def _pct(v: float) -> str:
    return f"{v * 100:+.1f}%"


def render(results: dict[str, Any]) -> str:
    """One markdown table: a row per configuration, the models side by side. A model reported
    in µs ("tiny") shows added µs/step, one reported in % shows the overhead in %."""
    models = list(results["models"])
    cuda = results["device"] == "cuda"
    header = ["configuration"]
    for m in models:
        if WORKLOADS[m].unit == "us":
            header += [f"{m}: µs/step", f"{m}: added µs/step (range)", f"{m}: added CPU µs/step"]
        else:
            header += [f"{m}: ms/step", f"{m}: overhead (range)", f"{m}: CPU overhead"]
        if cuda:
            header.append(f"{m}: syncs/step")
    header.append("start + end (s)")
    first_rows = results["models"][models[0]]["rows"]
    rows = []
    for i, first in enumerate(first_rows):
        name = first["config"]
        row = [name + (" †" if first["baseline"] != "plain" else "")]
        for m in models:
            r = results["models"][m]["rows"][i]
            us = WORKLOADS[m].unit == "us"
            row.append(f"{r['step_us']:.1f}" if us else f"{r['step_us'] / 1000:.3f}")
            if name == "plain":
                row += ["—", "—"]
            elif us:
                row.append(f"{r['added_us']:+.1f} ({r['added_us_min']:+.1f} … {r['added_us_max']:+.1f})")
                row.append(f"{r['cpu_added_us']:+.1f}")
            else:
                row.append(f"{_pct(r['overhead'])} ({_pct(r['overhead_min'])} … {_pct(r['overhead_max'])})")
                row.append(_pct(r["cpu_overhead"]))
            if cuda:
                row.append("—" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}")
        row.append(f"{first['setup_s']:.2f} + {first['teardown_s']:.2f}")
        rows.append(row)
    return table(header, rows)


def targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets, checked against this run: (target, met, numbers)."""
    out = []
    for model, data in results["models"].items():
        r = {row["config"]: row for row in data["rows"]}
        unit = WORKLOADS[model].unit

        def fmt(row: dict[str, Any]) -> str:
            return f"{row['added_us']:+.1f} µs/step" if unit == "us" else _pct(row["overhead"])

        if "autolog-disabled" in r:
            v = r["autolog-disabled"]["overhead"]
            noise = f" (plain-again: {_pct(r['plain-again']['overhead'])})" if "plain-again" in r else ""
            out.append((f"{model}: autolog-disabled within noise of plain (≤ 1%)", v <= 0.01,
                        f"{_pct(v)}{noise}"))
        for label in ("local", "local+tb"):
            track = r.get(f"autolog-track [{label}]")
            if track is not None and unit == "us":
                out.append((f"{model}: autolog-track [{label}] ≤ 15 µs/step", track["added_us"] <= 15, fmt(track)))
            elif track is not None:
                out.append((f"{model}: autolog-track [{label}] ≤ 2%", track["overhead"] <= 0.02, fmt(track)))
            full = r.get(f"autolog-watch-all [{label}]")
            if full is None:
                continue
            if unit == "%":
                out.append((f"{model}: autolog-watch-all [{label}] ≤ 5%", full["overhead"] <= 0.05, fmt(full)))
            for anchor, factor, text in (("wandb-offline", 0.5, "< ½ wandb-offline's overhead"),
                                         ("tensorboard-manual", 1.0, "< tensorboard-manual's overhead")):
                if anchor in r:
                    a = r[anchor]
                    out.append((f"{model}: autolog-watch-all [{label}] {text}",
                                full["added_us"] < factor * a["added_us"], f"{fmt(full)} vs {fmt(a)}"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=sorted(WORKLOADS), default=None,
                        help="workloads (default: tiny small; large on cuda)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per configuration and round (default per model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=LOG_EVERY,
                        help="steps per timed window, also the warm-up (default %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--configs", nargs="+", default=None, help="only these configurations")
    parser.add_argument("--stat", default="q20", choices=sorted(STATS),
                        help="a round's time per step from its windows (default %(default)s)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--dist", choices=["fsdp"], default=None,
                        help="fsdp: watch(log='all') under FSDP2 vs plain FSDP2, 2 CPU ranks "
                             "(benchmarks/overhead_dist.py); --steps, --rounds, --window, --threads, --json apply")
    args = parser.parse_args(argv)
    if args.dist == "fsdp":
        from benchmarks import overhead_dist

        torch.set_num_threads(args.threads)
        return overhead_dist.main(args)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    models = args.model or (["large"] if device.type == "cuda" else ["tiny", "small"])
    configs = configurations()
    if args.configs:
        unknown = set(args.configs) - {c.name for c in configs}
        if unknown:
            parser.error(f"unknown configurations: {sorted(unknown)}; known: {[c.name for c in configs]}")
        wanted = set(args.configs) | {"plain"} | {c.baseline for c in configs if c.name in args.configs}
        configs = [c for c in configs if c.name in wanted]

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    started = time.time()
    results: dict[str, Any] = {"machine": machine(args.device), "device": device.type,
                               "settings": {"rounds": args.rounds, "window": args.window,
                                            "log_every": LOG_EVERY, "threads": args.threads,
                                            "stat": args.stat},
                               "models": {}}
    for name in models:
        workload = WORKLOADS[name]
        steps = args.steps or workload.steps
        samples = run_rounds(workload, configs, device, steps, args.rounds, args.window, progress)
        results["models"][name] = {"layers": list(workload.layers), "batch": workload.batch,
                                   "params": workload.params(), "steps": steps,
                                   "rows": summarise(configs, samples, args.stat)}
    results["seconds"] = round(time.time() - started, 1)
    results["targets"] = [{"target": t, "met": ok, "measured": m} for t, ok, m in targets(results)]

    print(f"Overhead per training step ({describe(results['machine'])}; {args.rounds} rounds; "
          f"log_every / histogram period / log_freq = {LOG_EVERY}):\n")
    for name in models:
        w = results["models"][name]
        print(f"- {name}: MLP {'-'.join(map(str, w['layers']))}, batch {w['batch']}, "
              f"{w['params']:,} parameters, SGD+momentum, {w['steps']} timed steps per round")
    print()
    print(render(results))
    stat = "20th percentile" if args.stat == "q20" else "median"
    print(f"\nTime per step: in each round the {stat} of the configuration's {args.window}-step windows, "
          f"then the median over rounds. Overhead: against `plain` in the same round, median over "
          f"rounds (range over rounds); `plain-again` shows the noise. CPU: all threads of the "
          f"process and its child processes (wandb's service), per step. "
          f"† against `lightning` (the same Lightning loop), not `plain`.")
    print("\nTargets:")
    for t in results["targets"]:
        print(f"- {'met' if t['met'] else 'MISSED'}: {t['target']}: {t['measured']}")
    print(f"\n({results['seconds']} s)")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
