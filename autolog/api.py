"""The public functions: `track`, `run`, `log`, `log_histogram`, `log_image`, `log_figure`,
`log_text`, `epoch_end`, `current_run`, `name_optimizer`."""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import wrapt

from autolog.capture import instrument
from autolog.core import run as run_mod
from autolog.core.run import NullRun, Run, finish_for_exception, summary_from_return
from autolog.core.settings import resolve

_warned_no_run = False


def _start(func: Callable | None, args: tuple, kwargs: dict, options: dict[str, Any]) -> Run | NullRun:
    settings = resolve(func=func, **options)
    if settings.disabled:
        return NullRun()
    return Run(settings, func=func, args=args, kwargs=kwargs, instrument=instrument)


def run(project: str | None = None, name: str | None = None, dir: str | None = None,
        sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
        config: Mapping[str, Any] | Any = None, tags: Iterable[str] = (),
        capture: Any = None, redact: Iterable[Any] | None = None, mode: str | None = None,
        flush_secs: float | None = None, close_timeout: float | None = None,
        sync_dist: bool = False, max_pending_mb: float | None = None, resume: Any = None,
        resume_step: int | None = None) -> Run | NullRun:
    """Start a run now; use it as a context manager, or call `finish()` yourself.

    Inside an open run this returns that run (nested runs join the outer one); its `config`
    is merged into the open run's config. The options are those of `track` (see ``capture``
    and ``resume`` there).
    """
    options = dict(project=project, name=name, dir=dir, sinks=sinks, log_every=log_every, config=config,
                   tags=tags, capture=capture, redact=redact, mode=mode, flush_secs=flush_secs,
                   close_timeout=close_timeout, sync_dist=sync_dist, max_pending_mb=max_pending_mb,
                   resume=resume, resume_step=resume_step)
    open_run = run_mod.current()
    if open_run is not None:
        if config is not None:
            open_run.update_config(config)
        return _Joined(open_run)
    return _start(None, (), {}, options)


class _Joined:
    """A nested `autolog.run(...)`: the outer run, which leaving the block does not end."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def __enter__(self) -> Run:
        return self._run

    def __exit__(self, *exc: Any) -> bool:
        return False

    def finish(self, *args: Any, **kwargs: Any) -> None:
        """Joined runs end with the outer one."""


def track(wrapped: Callable | None = None, *, project: str | None = None, name: str | None = None,
          dir: str | None = None, sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
          config: Mapping[str, Any] | Any = None, tags: Iterable[str] = (), capture: Any = None,
          redact: Iterable[Any] | None = None, mode: str | None = None, flush_secs: float | None = None,
          close_timeout: float | None = None, sync_dist: bool = False,
          max_pending_mb: float | None = None, resume: Any = None, resume_step: int | None = None) -> Any:
    """Decorate a train function: each call is a run whose config is the call's arguments.

    Works bare (``@track``) or with options (``@track(project="x")``) on functions, methods,
    staticmethods and classmethods. A call inside an open run joins it. The function's return
    value is returned unchanged, and its numbers are added to the run's summary. Exceptions
    propagate unchanged; the run records them (``failed``, or ``interrupted`` for Ctrl-C).

    capture: what the run records automatically, with no logging call. None or True (the
    default): everything -- "loss" (``train/loss``: the sum of the scalars ``backward()`` ran
    on since the previous optimizer step, per optimizer; ``train/grad_norm`` from
    ``clip_grad_norm_``), "optimizer" (``optim/lr``, momentum/betas, weight decay at every step)
    and "timing" (``perf/step_time``, ``perf/samples_per_sec``); the run's step follows the
    first optimizer whenever anything is captured (without any optimizer: each scalar
    ``backward()`` is a step). A name or a collection of names: those only. A mapping
    such as ``{"timing": False}``: everything but the names mapped to False. False: nothing is
    captured, nothing is patched, and `autolog.watch` is ignored.

    max_pending_mb: how much of the hand-offs may wait in memory for the run's log (default
    256, or ``$AUTOLOG_MAX_PENDING_MB``); past it the training thread waits at the hand-off for
    the disk (counted in ``meta["handoff_waits"]``, told once).

    resume: continue a stored run instead of starting one: a run id, id prefix, name or
    directory (as the command line takes them), or "last" (the newest run of the project that
    did not finish; none: a new run). Same id and directory, status back to ``running``, config
    merged, ``meta["attempts"]`` one entry per attempt. resume_step: the step the checkpoint was
    taken at; the run's step continues there, and what earlier attempts stored at steps >= it
    is superseded (see `autolog.read_run`). Without it the step continues where the run stopped.
    """
    options = dict(project=project, name=name, dir=dir, sinks=sinks, log_every=log_every, config=config,
                   tags=tags, capture=capture, redact=redact, mode=mode, flush_secs=flush_secs,
                   close_timeout=close_timeout, sync_dist=sync_dist, max_pending_mb=max_pending_mb,
                   resume=resume, resume_step=resume_step)
    if wrapped is None:
        return functools.partial(track, **options)

    def wrapper(func: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
        if run_mod.current() is not None:
            return func(*args, **kwargs)
        active = _start(func, args, kwargs, options)
        if isinstance(active, NullRun):
            try:
                return func(*args, **kwargs)
            finally:
                active.finish()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            finish_for_exception(active, exc)
            raise
        try:
            active.set_summary(summary_from_return(result))
        except Exception:  # noqa: BLE001 -- an odd return value never breaks the call
            pass
        finish_for_exception(active, None)  # never raises: the result is returned
        return result

    return _Tracked(wrapped, wrapper)


def _by_name(module: str, qualname: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Tracked(wrapt.FunctionWrapper):
    """A tracked function; pickles by reference like the function it wraps (so that
    `torch.multiprocessing.spawn(train)` and friends work)."""

    def __reduce_ex__(self, protocol: int) -> Any:
        return _by_name, (self.__module__, self.__qualname__)


def current_run() -> Run | None:
    """The open run of this process, or None."""
    active = run_mod.current()
    return None if isinstance(active, NullRun) else active


def _target() -> Run | None:
    global _warned_no_run
    active = run_mod.current()
    if active is None and not _warned_no_run and not run_mod._forked_child:
        import warnings

        _warned_no_run = True
        warnings.warn("autolog.log called outside a run: ignored (start one with @autolog.track "
                      "or autolog.run())", stacklevel=3)
    return active


def log(data: Mapping[str, Any] | str, value: Any = None, *, step: int | None = None,
        on_step: bool = True, on_epoch: bool = False, reduce: str = "mean", prog_bar: bool = False,
        logger: bool = True, sync_dist: bool = False) -> None:
    """Record scalars in the open run: ``log({"val/acc": acc})``, ``log("val/acc", acc)``, or
    ``log("performance", {"acc": acc, "recall": recall})`` (``performance/acc``,
    ``performance/recall``, as Lightning's ``self.log`` names a dict).

    Values: Python/numpy numbers or one-element real tensors (kept on their device). Everything
    is checked before anything is recorded: a bad name or value raises TypeError/ValueError
    naming its key, a bad `step` (not an integer in 0..2**63-1) a ValueError naming ``step``.
    Outside a run the call is ignored with one warning.

    The options mean what they mean in Lightning's ``self.log``:

    - on_step: record the value at its step (`step`, default the run's current step).
    - on_epoch: also aggregate the epoch's values with `reduce` ("mean" -- the plain mean of the
      values logged, not weighted by batch size --, "sum", "max" or "min"), on the values' device,
      and record the result when the epoch ends (the training DataLoader's next pass,
      `autolog.epoch_end()`, or the run's end) at the step of the name's last value in the
      epoch (logged before ``optimizer.step()``, as in Lightning's ``training_step``: the
      epoch's last step, where Lightning records it). With both, the names are
      ``<name>_step`` and ``<name>_epoch``; with `on_epoch` alone, ``<name>``. A name keeps one
      `reduce` within an epoch.
    - prog_bar: show the value on the console's progress bar too.
    - logger: False shows the value on the console bar only: not stored in the run's log, nor
      sent to any other sink (the bar is live: a bar that fell behind skips such values); in a
      job of several ranks, rank 0's value (never reduced).
    - sync_dist: reduce the value across ranks with `reduce` at the next reduction point (every
      ``log_every``-th step and the run's end; see `autolog.core.distributed`); without it only
      rank 0's values are kept. An epoch aggregate is reduced the same way when it is recorded.
    """
    active = _target()
    if active is not None:
        active.log(data, value, step=step, on_step=on_step, on_epoch=on_epoch, reduce=reduce,
                   prog_bar=prog_bar, logger=logger, sync_dist=sync_dist)


def log_histogram(name: str, values: Any, step: int | None = None, bins: int = 64) -> None:
    """Record a histogram of `values` in the open run (activations, embeddings, ...).

    values: a real tensor on any device (binned there, with `autolog.watch`'s kernel, at this
    call: a few device ops, nothing read back -- the bins are copied to the host with the next
    hand-off's one copy), a numpy array or a (nested) list of numbers. `bins` equal-width bins
    (1..512) between the finite minimum and maximum; NaN and infinities are left out. Reaches
    the local store (``RunData.histograms``), TensorBoard (HISTOGRAMS and DISTRIBUTIONS) and W&B.
    `step` defaults to the run's current step. Binning at the call (not later) means changing
    the tensor in place afterwards (an optimizer step on a weight) changes nothing recorded.
    """
    active = _target()
    if active is not None:
        active.log_histogram(name, values, step=step, bins=bins)


def epoch_end() -> None:
    """End the current epoch of the open run, for loops the DataLoader detection does not see.

    The values logged with ``on_epoch=True`` since the last epoch end are recorded (each at
    the step of its last value), the epoch index moves on, and the ``epoch`` series (the epoch
    index at every step, as Lightning records it) starts if it had not. Runs whose training reads a
    ``torch.utils.data.DataLoader`` need no call: each new pass over that loader begins an epoch
    (see the README's "Epochs"); a call just before the loader's next pass ends that epoch once.
    """
    active = _target()
    if active is not None:
        active.epoch_end()


def log_image(name: str, image: Any, step: int | None = None) -> None:
    """Record an image (HW/HWC/CHW array or tensor, PIL image) in the open run."""
    active = _target()
    if active is not None:
        active.log_image(name, image, step=step)


def log_figure(name: str, figure: Any, step: int | None = None, close: bool = False) -> None:
    """Record a matplotlib figure in the open run."""
    active = _target()
    if active is not None:
        active.log_figure(name, figure, step=step, close=close)


def log_text(name: str, text: str, step: int | None = None) -> None:
    """Record a text in the open run."""
    active = _target()
    if active is not None:
        active.log_text(name, text, step=step)


def name_optimizer(optimizer: Any, name: str) -> Any:
    """Name `optimizer`'s series: ``train/loss/<name>``, ``train/grad_norm/<name>``,
    ``optim/<name>/lr`` (``optim/<name>/lr/<group>``, momentum, betas, weight decay alike) and,
    for a watched model this optimizer is not the first to update, ``grad_norm/total/<name>``;
    returns `optimizer`.

    Unnamed, the first optimizer that steps has the plain names (``train/loss``, ``optim/lr``)
    and optimizer k >= 1 uses k (``train/loss/1``). The name holds for the optimizer's life: in
    the open run from its next step, and in later runs. `optimizer` is a ``torch.optim.Optimizer``
    (or a wrapper holding one, such as Lightning's ``LightningOptimizer``); `name` a non-empty
    string without "/" that is not a number. Works outside a run too.
    """
    from autolog.capture.optim import inner_optimizer, name_optimizer as _name

    _name(optimizer, name)
    active = run_mod.current()
    capture = active.capture if active is not None else None
    if capture is not None:
        capture.rename(inner_optimizer(optimizer), name.strip())
    return optimizer
