"""Per-step cost of experiment logging: one training loop, with and without each logging tool.

    python -m benchmarks.overhead [--model tiny-adam small-adam tiny small large] [--steps N]
                                  [--rounds R] [--window W] [--warm K] [--device cpu|cuda]
                                  [--configs NAME ...] [--stat median|q20] [--json OUT]
    python -m benchmarks.overhead --dist fsdp [--steps N] [--rounds R] [--window W]   (FSDP2, 2 CPU ranks:
                                  benchmarks/overhead_dist.py)

Workloads (`--model`; default tiny-adam and small-adam, large on cuda): the issue's models,
tiny-adam (MLP 128-32-32-32-10) and small-adam (MLP 128-256-256-256-10), batch 64,
``torch.optim.Adam(lr=1e-3)``, on which the targets are checked; and the earlier SGD+momentum
ones, tiny (32-64-10, batch 32), small (256-320-320-320-10, batch 64) and large (for a GPU).
tiny models report added µs/step, the others added %.

Interleaved windows, as in benchmarks/overhead_dist.py: every configuration trains the same
seeded model on the same batch with the same loop (`Loop.run`); only what it adds differs. Each
round builds one fresh model and trains it on through all of its windows: for every
configuration, `N / W` pairs of windows (``plain``, the configuration), the pairs of all the
configurations in a random (seeded) order and each pair's two windows in a random order. A
window opens the configuration (its autolog run and watch, its SummaryWriter, its wandb run:
untimed), runs K untimed warm-up steps in it (default: half the configuration's log_every, 50,
or 25 for autolog-default), then W timed steps (default 200: at log_every=100 the window holds
two hand-offs, at its steps 50 and 150, so the hand-off and the writer thread's work are inside
it), then closes it (untimed). A configuration's time per step in a round is the median
(``--stat``) of its windows; its overhead is that minus the median of its paired ``plain``
windows, and the table gives the median over rounds with the range. ``plain-again`` is
``plain`` paired with itself: its overhead is the noise of the measurement. "× floor" is a
configuration's added time as a multiple of ``floor``'s.

Configurations (`--configs` picks some by name; ``plain`` is always measured):
plain, plain-again; floor (the least plain Python that captures what autolog-track does:
``loss.detach()`` appended to a list after each backward, ``opt.param_groups[0]["lr"]`` and
``time.perf_counter()`` after each optimizer step); plain+item (a ``loss.item()`` per step);
tensorboard-manual (``SummaryWriter.add_scalar`` of loss and lr every step, ``add_histogram``
of every parameter and gradient every 100 steps); wandb-offline (``wandb.init(mode="offline")``,
``run.watch(model, log="all", log_freq=100)``, ``run.log`` of loss and lr every step; system
metrics off); autolog-disabled (``mode="disabled"``, with ``watch``); autolog-track (loss,
optimizer, step time: no call in the loop), autolog-watch-gradients, autolog-watch-all, each one
``autolog.run(log_every=100)`` with the local sink and with local + TensorBoard;
autolog-track+epochs [local] (autolog-track plus ``autolog.log(loss, on_epoch=True)`` every
step and an epoch end every 100 steps: the ``epoch`` series and the device-side epoch
aggregation); autolog-default (``@autolog.track`` with its defaults -- sinks local + console,
log_every 50 -- only ``dir`` and ``project`` given, and ``autolog.watch(model)`` with its
defaults; stdout and stderr go to /dev/null while it runs, so the console sink writes as it would
to a pipe); and, when Lightning is installed, lightning (the same model and optimizer as a
``LightningModule``, no logger), lightning+self.log (``self.log`` of the loss every step,
Lightning's default logger) and lightning+self.log+autolog (the same with ``logger=False`` and
autolog's ``AutologCallback``: local sink, no watch). The Lightning ones run Lightning's own loop,
so they are not interleaved: each is measured once per round on a fresh model (warm-up W, then
N / W windows of W steps, timed from a callback), and the last two against ``lightning``.

Writer thread: after each autolog window the table reads ``run.pipeline.writer_time`` (the CPU
seconds autolog's writer thread spent on hand-offs, where the pipeline counts them) and reports
its CPU µs per hand-off and per timed step ("—" where it is not counted).

On ``--device cuda`` the table also counts the host-device synchronisations per step of the
training thread (``torch.cuda.set_sync_debug_mode("warn")`` over W more untimed steps after the
last pair's windows of each round).

`targets` checks the issue's targets (issue 21) on tiny-adam and small-adam: autolog-track
[local] ≤ 15 µs/step on tiny-adam and ≤ 2 % on small-adam, autolog-watch-all [local] ≤ 5 % and
autolog-default ≤ 3 % on small-adam, autolog-track [local+tb] within 10 µs/step of
autolog-track [local], and every autolog row (against ``plain``) ≤ ⅓ of wandb-offline's overhead
on the same model.
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
    """An MLP: `layers` are the widths from input to classes; one fixed batch; `optim` is
    "sgd" (SGD with momentum 0.9, lr 0.01) or "adam" (Adam, lr 1e-3)."""

    name: str
    layers: tuple[int, ...]
    batch: int
    steps: int  # default timed steps per configuration and round
    unit: str  # how its overhead is reported: "us" (added µs/step) or "%"
    optim: str = "sgd"

    def build(self, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        mods: list[torch.nn.Module] = []
        with device:  # parameters created (and initialised) on the device
            for i, (a, b) in enumerate(zip(self.layers, self.layers[1:])):
                mods.append(torch.nn.Linear(a, b))
                if i < len(self.layers) - 2:
                    mods.append(torch.nn.ReLU())
        model = torch.nn.Sequential(*mods)
        if self.optim == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(self.batch, self.layers[0], device=device)
        y = torch.randint(0, self.layers[-1], (self.batch,), device=device)
        return model, opt, x, y

    def params(self) -> int:
        return sum(a * b + b for a, b in zip(self.layers, self.layers[1:]))

    def describe(self) -> str:
        opt = "Adam (lr 1e-3)" if self.optim == "adam" else "SGD+momentum"
        return f"MLP {'-'.join(map(str, self.layers))}, batch {self.batch}, {self.params():,} parameters, {opt}"


WORKLOADS = {
    # the issue's models (issue 21): MLP 128-W-W-W-10, batch 64, Adam; the targets are checked on these
    "tiny-adam": Workload("tiny-adam", (128, 32, 32, 32, 10), 64, 1000, "us", "adam"),
    "small-adam": Workload("small-adam", (128, 256, 256, 256, 10), 64, 600, "%", "adam"),
    # the earlier SGD workloads. tiny: the fixed per-step cost dominates: report added µs/step
    "tiny": Workload("tiny", (32, 64, 10), 32, 1000, "us"),
    # ~1-3 ms per step on one CPU thread: report %
    "small": Workload("small", (256, 320, 320, 320, 10), 64, 600, "%"),
    # ~50M parameters, for a GPU
    "large": Workload("large", (4096, 4096, 4096, 4096, 10), 512, 1000, "%"),
}
TARGET_MODELS = ("tiny-adam", "small-adam")  # where `targets` checks the issue's numbers


# ---------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Hooks:
    """What a configuration adds to the loop (None: nothing)."""

    after_backward: Callable[[int, torch.Tensor], None] | None = None
    after_step: Callable[[int, torch.Tensor], None] | None = None
    settle: Callable[[], None] | None = None  # called once after the warm-up, untimed
    check: Callable[[], None] | None = None  # called after teardown: did it log anything?
    run: Any = None  # an autolog run: its writer thread's time is read around the timed window


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


# ---------------------------------------------------------------------------------- measurement
Session = Callable[["Ctx", Callable[[Hooks], Any]], Any]


@dataclasses.dataclass
class Sample:
    """One configuration in one round.

    Interleaved configurations: `windows` are the seconds per step of its timed windows and
    `base_windows` those of the `plain` windows paired with them (the same model, the same
    round); `cpu_per_step` and `base_cpu_per_step` likewise (medians over the windows). A
    configuration with its own loop (Lightning) has ``base_windows=None``: its baseline is
    another configuration's sample of the same round."""

    windows: list[float]
    setup_s: float
    teardown_s: float
    cpu_per_step: float  # CPU seconds per timed step: this process's threads and its children
    syncs_per_step: float | None = None
    base_windows: list[float] | None = None
    base_cpu_per_step: float | None = None
    writer_handoffs: int | None = None  # hand-offs the writer thread did in the timed windows
    writer_cpu_s: float | None = None  # its CPU seconds on them (Pipeline.writer_time)
    writer_steps: int = 0  # the timed steps those hand-offs came from


@dataclasses.dataclass(frozen=True)
class Config:
    """`session(ctx, body)`: set the configuration up, call ``body(hooks)`` and return its
    result, tear it down; run in windows interleaved with `plain` (`run_rounds`). `measure`
    instead: a configuration with its own loop, measured whole once per round (Lightning)."""

    name: str
    session: Session | None = None
    measure: Callable[[Ctx, int, int, int], Sample] | None = None
    baseline: str = "plain"
    group: str = "main"
    log_every: int = LOG_EVERY  # its hand-off period: the warm-up is half of it


def hooked(factory: Callable[[Ctx], Any]) -> Session:
    """A `session` for a configuration given as a context manager yielding `Hooks`."""

    def session(ctx: Ctx, body: Callable[[Hooks], Any]) -> Any:
        with factory(ctx) as hooks:
            result = body(hooks)
        if hooks.check is not None:
            hooks.check()
        return result

    return session


def _writer_time(run: Any) -> tuple[int, float] | None:
    """(hand-offs, CPU seconds) of the run's writer thread so far (`Pipeline.writer_time`), or
    None when the pipeline does not count them (a disabled run, an older autolog)."""
    got = getattr(getattr(run, "pipeline", None), "writer_time", None)
    if not isinstance(got, dict):
        return None
    try:
        return int(got["handoffs"]), float(got["thread_cpu_s"])
    except (KeyError, TypeError, ValueError):
        return None


def _drain(run: Any, timeout: float = 10.0) -> None:
    """Wait (untimed) until the writer has done every hand-off the training thread made, without
    handing off what is still buffered (`run.flush` would add a hand-off)."""
    pipeline = getattr(run, "pipeline", None)
    wait = getattr(pipeline, "wait", None)
    if wait is not None:
        try:
            wait(timeout, sinks=False)
        except TypeError:
            wait(timeout)
    submitted = getattr(run, "flush_count", None)
    if submitted is None:
        return
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # the count may be updated just after the batch is logged
        got = _writer_time(run)
        if got is None or got[0] >= submitted:
            break
        time.sleep(0.001)


@dataclasses.dataclass
class Window:
    """One timed window of one configuration."""

    per_step: float
    cpu_per_step: float
    setup_s: float
    teardown_s: float
    syncs_per_step: float | None = None
    writer: tuple[int, float] | None = None  # (hand-offs, CPU s) of the writer in the window


def measure_window(ctx: Ctx, session: Session, warm: int, steps: int, count_syncs: bool) -> Window:
    """Set the configuration up, `warm` untimed steps, `steps` timed steps, tear down (untimed).
    With `count_syncs` (CUDA), `steps` more untimed steps count the host-device syncs."""
    marks: dict[str, Any] = {}

    def body(hooks: Hooks) -> None:
        marks["in"] = time.perf_counter()
        loop = Loop(ctx, hooks)
        loop.run(warm)
        if hooks.settle is not None:
            hooks.settle()
        run = hooks.run
        before = None
        if run is not None and _writer_time(run) is not None:
            _drain(run)
            before = _writer_time(run)
        children = _children()
        gc.collect()
        _sync(ctx.device)
        cpu0 = cpu_seconds(children)
        t = time.perf_counter()
        loop.run(steps)
        _sync(ctx.device)
        marks["per_step"] = (time.perf_counter() - t) / steps
        marks["cpu"] = (cpu_seconds(children) - cpu0) / steps
        if before is not None:
            _drain(run)
            after = _writer_time(run)
            if after is not None:
                marks["writer"] = (after[0] - before[0], after[1] - before[1])
        if count_syncs:
            counter = SyncCounter()
            counter.start()
            try:
                loop.run(steps)
            finally:
                marks["syncs"] = counter.stop() / steps
        marks["out"] = time.perf_counter()

    t0 = time.perf_counter()
    session(ctx, body)
    t1 = time.perf_counter()
    return Window(marks["per_step"], marks["cpu"], marks["in"] - t0, t1 - marks["out"],
                  marks.get("syncs"), marks.get("writer"))


# ---------------------------------------------------------------------------------- configurations
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


@contextlib.contextmanager
def floor(ctx: Ctx) -> Iterator[Hooks]:
    """The least plain Python that captures what autolog-track does: the loss tensor after each
    backward, the learning rate and a timestamp after each optimizer step, appended to lists."""
    losses: list[torch.Tensor] = []
    lrs: list[float] = []
    stamps: list[float] = []
    group = ctx.opt.param_groups[0]
    now = time.perf_counter

    def after_backward(step: int, loss: torch.Tensor) -> None:
        losses.append(loss.detach())

    def after_step(step: int, loss: torch.Tensor) -> None:
        lrs.append(group["lr"])
        stamps.append(now())

    def check() -> None:
        assert len(losses) == len(lrs) == len(stamps) > 0

    yield Hooks(after_backward=after_backward, after_step=after_step, check=check)


def autolog_default(ctx: Ctx, body: Callable[[Hooks], Any]) -> Any:
    """``@autolog.track`` with its defaults (sinks local + console, log_every 50; only `dir` and
    `project` given) and ``autolog.watch(model)`` with its defaults. The console sink writes to
    stderr, taken at the run's start: stdout and stderr go to /dev/null for the whole session
    (a pipe, as in a batch job: no bar, the summary at the end)."""
    import autolog

    out: dict[str, Any] = {}

    @autolog.track(project="bench", dir=os.path.join(ctx.tmp, "runs"))
    def train() -> None:
        run = autolog.current_run()
        autolog.watch(ctx.model)
        out["path"] = run.path
        out["result"] = body(Hooks(settle=lambda: run.flush(wait=True), run=run))

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        train()
    metrics = autolog.read_run(out["path"]).metrics
    assert {"train/loss", "optim/lr", "grad_norm/total"} <= set(metrics), sorted(metrics)
    return out["result"]


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


EPOCH_STEPS = 100  # autolog-track+epochs: an epoch ends every this many steps of a window's loop


def autolog_config(sinks: Sequence[str], watch: str | None = None, mode: str | None = None,
                   epochs: bool = False):
    """`epochs`: also ``autolog.log`` of the loss tensor with ``on_epoch=True`` every step and
    an epoch end every `EPOCH_STEPS` steps (what a DataLoader's new pass does), so the ``epoch``
    series and the device-side aggregation are on the hot path. Each run ends with its window:
    its watch ends with it."""
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
                else:  # the model is shared by a round's windows: no watch may leak into this one
                    assert "grad_norm/total" not in metrics, sorted(metrics)
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

            yield Hooks(after_step=after_step, settle=lambda: run.flush(wait=True), check=check, run=run)

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
        Config("floor", hooked(floor)),
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
    from autolog.core.settings import DEFAULT_LOG_EVERY

    configs.append(Config("autolog-default", autolog_default, log_every=DEFAULT_LOG_EVERY))
    try:
        import importlib.util

        has_lightning = importlib.util.find_spec("lightning") is not None
    except (ImportError, ValueError):
        has_lightning = False
    if has_lightning:
        configs += [Config("lightning", measure=lightning_config(log=False), group="lightning"),
                    Config("lightning+self.log", measure=lightning_config(log=True), baseline="lightning",
                           group="lightning"),
                    Config("lightning+self.log+autolog",
                           measure=lightning_config(log=True, logger=False, autolog_callback=True),
                           baseline="lightning", group="lightning")]
    return configs


# ---------------------------------------------------------------------------------- driver
def run_rounds(workload: Workload, configs: list[Config], device: torch.device, steps: int,
               rounds: int, window: int, warm: int | None,
               progress: Callable[[str], None]) -> dict[str, list[Sample]]:
    """Each round: one fresh (seeded) model, then for every interleaved configuration `steps /
    window` pairs of windows (``plain``, the configuration), the pairs of all configurations in
    a random order and each pair's two windows in a random order (seeded), the same model
    training on throughout. Every window: the configuration's setup (untimed), `warm` untimed
    steps (default: half its hand-off period, so that the timed window's hand-offs fall inside
    it, not at its edges), `window` timed steps, its teardown (untimed). ``plain`` windows are
    timed the same way (no setup). Then the configurations with their own loop (Lightning),
    each once on a fresh model, as before."""
    samples: dict[str, list[Sample]] = {c.name: [] for c in configs}
    pairs = max(1, steps // window)
    rng = random.Random(0)
    by_name = {c.name: c for c in configs}
    plain_session = by_name["plain"].session
    interleaved = [c for c in configs if c.session is not None and c.name != "plain"]
    own_loop = [c for c in configs if c.measure is not None]
    cuda = device.type == "cuda"
    for r in range(rounds):
        model, opt, x, y = workload.build(device)
        got: dict[str, list[Window]] = {c.name: [] for c in interleaved}
        base: dict[str, list[Window]] = {c.name: [] for c in interleaved}
        plain_all: list[Window] = []
        tasks = [(c, i) for c in interleaved for i in range(pairs)]
        rng.shuffle(tasks)
        with tempfile.TemporaryDirectory(prefix="autolog-bench-", ignore_cleanup_errors=True) as tmp:
            for n, (config, i) in enumerate(tasks):
                warm_steps = config.log_every // 2 if warm is None else warm
                count = cuda and i == pairs - 1
                sides = ["plain", "config"]
                rng.shuffle(sides)
                for side in sides:
                    ctx = Ctx(model, opt, x, y, tempfile.mkdtemp(dir=tmp), device)
                    session = plain_session if side == "plain" else config.session
                    w = measure_window(ctx, session, warm_steps, window, count)
                    (base if side == "plain" else got)[config.name].append(w)
                    if side == "plain":
                        plain_all.append(w)
        del model, opt
        for c in interleaved:
            ws, bs = got[c.name], base[c.name]
            samples[c.name].append(_interleaved_sample(ws, bs, window))
        if "plain" in samples:
            samples["plain"].append(_interleaved_sample(plain_all, plain_all, window))
        for config in own_loop:
            model, opt, x, y = workload.build(device)
            with tempfile.TemporaryDirectory(prefix="autolog-bench-", ignore_cleanup_errors=True) as tmp:
                ctx = Ctx(model, opt, x, y, tmp, device)
                gc.collect()
                samples[config.name].append(config.measure(ctx, window, pairs, window))
            del model, opt, ctx
        progress(f"{workload.name}: round {r + 1}/{rounds} done")
    return samples


def _interleaved_sample(ws: list[Window], bs: list[Window], steps: int) -> Sample:
    syncs = [w.syncs_per_step for w in ws if w.syncs_per_step is not None]
    writer = [w.writer for w in ws if w.writer is not None]
    return Sample([w.per_step for w in ws], median([w.setup_s for w in ws]), median([w.teardown_s for w in ws]),
                  median([w.cpu_per_step for w in ws]), median(syncs) if syncs else None,
                  base_windows=[b.per_step for b in bs], base_cpu_per_step=median([b.cpu_per_step for b in bs]),
                  writer_handoffs=sum(h for h, _ in writer) if writer else None,
                  writer_cpu_s=sum(s for _, s in writer) if writer else None,
                  writer_steps=steps * len(writer))


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
    overhead against its baseline in the same round (the paired ``plain`` windows, or the
    baseline configuration's sample); medians over rounds and ranges; the writer thread's CPU
    time per hand-off and per step over all its windows; its added time as a multiple of
    ``floor``'s."""
    q = STATS[stat]
    rows = []
    for c in configs:
        own = samples[c.name]
        per_round = [quantile(s.windows, q) for s in own]
        if all(s.base_windows is not None for s in own):
            base_round = [quantile(s.base_windows, q) for s in own]
            base_cpu = [s.base_cpu_per_step for s in own]
        else:
            base_round = [quantile(s.windows, q) for s in samples[c.baseline]]
            base_cpu = [s.cpu_per_step for s in samples[c.baseline]]
        ratios = [a / b - 1.0 for a, b in zip(per_round, base_round)]
        added = [a - b for a, b in zip(per_round, base_round)]
        cpu_added = [a.cpu_per_step - b for a, b in zip(own, base_cpu)]
        cpu_ratios = [a.cpu_per_step / b - 1.0 for a, b in zip(own, base_cpu)]
        syncs = [s.syncs_per_step for s in own if s.syncs_per_step is not None]
        handoffs = sum(s.writer_handoffs for s in own if s.writer_handoffs is not None)
        counted = [s for s in own if s.writer_cpu_s is not None]
        writer_s = sum(s.writer_cpu_s for s in counted)
        writer_steps = sum(s.writer_steps for s in counted)
        rows.append({
            "config": c.name, "baseline": c.baseline, "group": c.group,
            "interleaved": c.session is not None,
            "step_us": median(per_round) * 1e6,
            "added_us": median(added) * 1e6, "added_us_min": min(added) * 1e6, "added_us_max": max(added) * 1e6,
            "overhead": median(ratios), "overhead_min": min(ratios), "overhead_max": max(ratios),
            "cpu_us": median([s.cpu_per_step for s in own]) * 1e6,
            "cpu_added_us": median(cpu_added) * 1e6, "cpu_overhead": median(cpu_ratios),
            "setup_s": median([s.setup_s for s in own]),
            "teardown_s": median([s.teardown_s for s in own]),
            "syncs_per_step": median(syncs) if syncs else None,
            "writer_handoffs": handoffs if counted else None,
            "writer_cpu_us_per_handoff": writer_s / handoffs * 1e6 if counted and handoffs else None,
            "writer_cpu_us_per_step": writer_s / writer_steps * 1e6 if counted and writer_steps else None,
            "round_step_us": [v * 1e6 for v in per_round],
            "round_base_us": [v * 1e6 for v in base_round],
            "round_added_us": [v * 1e6 for v in added],
            "round_median_us": [median(s.windows) * 1e6 for s in own],
            "round_q20_us": [quantile(s.windows, 0.2) * 1e6 for s in own],
        })
    floor_row = next((r for r in rows if r["config"] == "floor"), None)
    floor_us = floor_row["added_us"] if floor_row else None
    for r in rows:
        usable = floor_us is not None and floor_us > 0 and r["config"] not in ("plain", "floor")
        r["x_floor"] = r["added_us"] / floor_us if usable else None
        if r["config"] == "floor" and floor_us is not None and floor_us > 0:
            r["x_floor"] = 1.0
    return rows


def _pct(v: float) -> str:
    return f"{v * 100:+.1f}%"


def _writer_cell(r: dict[str, Any]) -> str:
    if r["writer_cpu_us_per_handoff"] is None:
        return "—"
    return f"{r['writer_cpu_us_per_handoff']:.0f} ({r['writer_cpu_us_per_step']:.1f})"


def render(results: dict[str, Any]) -> str:
    """One markdown table: a row per configuration, the models side by side. A model reported
    in µs ("tiny") shows added µs/step, one reported in % shows the overhead in %."""
    models = list(results["models"])
    cuda = results["device"] == "cuda"
    header = ["configuration"]
    for m in models:
        if WORKLOADS[m].unit == "us":
            header += [f"{m}: µs/step", f"{m}: added µs/step (range)", f"{m}: × floor",
                       f"{m}: added CPU µs/step"]
        else:
            header += [f"{m}: ms/step", f"{m}: overhead (range)", f"{m}: × floor", f"{m}: CPU overhead"]
        header.append(f"{m}: writer CPU µs/hand-off (/step)")
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
                row += ["—", "—", "—"]
            else:
                if us:
                    row.append(f"{r['added_us']:+.1f} ({r['added_us_min']:+.1f} … {r['added_us_max']:+.1f})")
                else:
                    row.append(f"{_pct(r['overhead'])} ({_pct(r['overhead_min'])} … {_pct(r['overhead_max'])})")
                row.append("—" if r["x_floor"] is None else f"{r['x_floor']:.1f}×")
                row.append(f"{r['cpu_added_us']:+.1f}" if us else _pct(r["cpu_overhead"]))
            row.append(_writer_cell(r))
            if cuda:
                row.append("—" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}")
        row.append(f"{first['setup_s']:.2f} + {first['teardown_s']:.2f}")
        rows.append(row)
    return table(header, rows)


def targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets (issue 21), checked on the issue's models (`TARGET_MODELS`, Adam)
    that this run measured: (target, met, numbers)."""
    out = []
    for model, data in results["models"].items():
        if model not in TARGET_MODELS:
            continue
        r = {row["config"]: row for row in data["rows"]}
        unit = WORKLOADS[model].unit

        def fmt(row: dict[str, Any]) -> str:
            us = f"{row['added_us']:+.1f} µs/step"
            return us if unit == "us" else f"{_pct(row['overhead'])} ({us})"

        def check(config: str, text: str, ok: Callable[[dict[str, Any]], bool]) -> None:
            if config in r:
                out.append((f"{model}: {config} {text}", ok(r[config]), fmt(r[config])))

        if unit == "us":
            check("autolog-track [local]", "≤ 15 µs/step", lambda row: row["added_us"] <= 15)
        else:
            check("autolog-track [local]", "≤ 2%", lambda row: row["overhead"] <= 0.02)
            check("autolog-watch-all [local]", "≤ 5%", lambda row: row["overhead"] <= 0.05)
            check("autolog-default", "≤ 3%", lambda row: row["overhead"] <= 0.03)
        if "autolog-track [local+tb]" in r and "autolog-track [local]" in r:
            tb, local = r["autolog-track [local+tb]"], r["autolog-track [local]"]
            out.append((f"{model}: autolog-track [local+tb] within 10 µs/step of autolog-track [local]",
                        tb["added_us"] - local["added_us"] <= 10, f"{fmt(tb)} vs {fmt(local)}"))
        if "wandb-offline" in r:
            wb = r["wandb-offline"]
            for name, row in r.items():
                if name.startswith("autolog") and row["baseline"] == "plain":
                    out.append((f"{model}: {name} ≤ ⅓ wandb-offline's overhead",
                                row["added_us"] <= wb["added_us"] / 3, f"{fmt(row)} vs {fmt(wb)}"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=list(WORKLOADS), default=None,
                        help="workloads (default: tiny-adam small-adam; large on cuda)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per configuration and round, in windows of --window "
                             "(default per model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=None,
                        help=f"steps per timed window (default {2 * LOG_EVERY}: two hand-offs at "
                             f"log_every={LOG_EVERY}; --dist fsdp: {LOG_EVERY})")
    parser.add_argument("--warm", type=int, default=None,
                        help="untimed steps before each timed window (default: half the "
                             "configuration's log_every)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="only these configurations (plain, and the baselines they need, always)")
    parser.add_argument("--stat", default="median", choices=sorted(STATS),
                        help="a round's time per step from its windows (default %(default)s)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--dist", choices=["fsdp"], default=None,
                        help="fsdp: watch(log='all') under FSDP2 vs plain FSDP2, 2 CPU ranks "
                             "(benchmarks/overhead_dist.py); --steps, --rounds, --window, --threads, --json apply")
    args = parser.parse_args(argv)
    if args.dist == "fsdp":
        from benchmarks import overhead_dist

        args.window = args.window or LOG_EVERY  # one hand-off per window
        torch.set_num_threads(args.threads)
        return overhead_dist.main(args)

    args.window = args.window or 2 * LOG_EVERY
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    models = args.model or (["large"] if device.type == "cuda" else list(TARGET_MODELS))
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
                               "settings": {"rounds": args.rounds, "window": args.window, "warm": args.warm,
                                            "log_every": LOG_EVERY, "threads": args.threads,
                                            "stat": args.stat},
                               "models": {}}
    for name in models:
        workload = WORKLOADS[name]
        steps = args.steps or workload.steps
        samples = run_rounds(workload, configs, device, steps, args.rounds, args.window, args.warm, progress)
        results["models"][name] = {"layers": list(workload.layers), "batch": workload.batch,
                                   "optim": workload.optim, "params": workload.params(),
                                   "steps": max(1, steps // args.window) * args.window,
                                   "rows": summarise(configs, samples, args.stat)}
    results["seconds"] = round(time.time() - started, 1)
    results["targets"] = [{"target": t, "met": ok, "measured": m} for t, ok, m in targets(results)]

    print(f"Overhead per training step ({describe(results['machine'])}; {args.rounds} rounds; "
          f"log_every / histogram period / log_freq = {LOG_EVERY}, autolog-default: autolog's own):\n")
    for name in models:
        w = results["models"][name]
        print(f"- {name}: {WORKLOADS[name].describe()}, {w['steps']} timed steps per configuration "
              f"and round in {args.window}-step windows")
    print()
    print(render(results))
    stat = "median" if args.stat == "median" else "20th percentile"
    warm = "half its log_every" if args.warm is None else str(args.warm)
    print(f"\nInterleaved windows: each round trains one model; every configuration's {args.window}-step "
          f"windows alternate with `plain` windows in a random order (setup, {warm} warm-up steps "
          f"and teardown untimed). Time per step: the {stat} of a round's windows, then the median "
          f"over rounds. Overhead: against its paired `plain` windows in the same round, median over "
          f"rounds (range over rounds); `plain-again` shows the noise. × floor: the added time over "
          f"`floor`'s. CPU: all threads of the process and its child processes (wandb's service), per "
          f"step. Writer: CPU time of autolog's writer thread per hand-off (per timed step), "
          f"Pipeline.writer_time; — where not counted. † its own loop, against `lightning`, not interleaved.")
    if results["targets"]:
        print("\nTargets:")
        for t in results["targets"]:
            print(f"- {'met' if t['met'] else 'MISSED'}: {t['target']}: {t['measured']}")
    print(f"\n({results['seconds']} s)")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
