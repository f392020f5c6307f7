"""PyTorch Lightning: `AutologCallback` gives a Lightning run everything autolog gives a plain
training loop.

    from autolog.integrations.lightning import AutologCallback

    trainer = L.Trainer(max_epochs=10, callbacks=[AutologCallback(project="mnist", watch="all")])
    trainer.fit(model, datamodule)

One autolog run per ``fit`` (``validate``/``test`` called on their own get one too): config from
``save_hyperparameters`` (module and datamodule) plus a few trainer settings under
``trainer.``; every ``self.log`` value Lightning hands its loggers, at autolog's step; the loss,
optimizer hyperparameters, step count and timing from autolog's automatic capture; the
gradient/weight statistics of ``autolog.watch(pl_module)``; the final status (``finished``,
``failed`` with the exception, ``interrupted`` on Ctrl-C). Inside an open run (a train
function under ``@autolog.track`` calling ``trainer.fit``) the callback joins that run.

Why a Callback, not a Logger: a Lightning ``Logger`` only ever sees metrics after Lightning has
turned every tensor into a Python float (``.item()``: a host-device sync per metric at each
``log_every_n_steps``) and never sees the exception that ended a run, the module (for
``watch``), nor where a step begins and ends. A callback sees all of that: it reads the same
values Lightning gives its loggers (``trainer.logged_metrics``) as tensors, which stay on the
device until autolog's one batched copy per hand-off; it records the exception; and it adds to
whatever loggers the user keeps instead of replacing them. With ``logger=False`` Lightning
converts nothing for loggers, so the run has no host-device sync of autolog's or of a logger's
making (values logged with ``prog_bar=True`` are still converted by Lightning at every step, for
its progress bar, whatever the loggers).

Other loggers: the callback adds to the trainer's loggers and never changes them. Pass
``Trainer(logger=False)`` to make autolog the only logger: by default Lightning adds a
``TensorBoardLogger`` that writes ``lightning_logs/version_N/`` (it creates that directory before
any callback runs, so a callback cannot prevent it) and converts every logged tensor with
``.item()`` every ``log_every_n_steps``. The callback warns when it sees that default logger.
Checkpoints then go to ``<default_root_dir>/checkpoints/`` (Lightning's rule without a logger),
or wherever ``ModelCheckpoint(dirpath=...)`` says.

Reading metrics: ``trainer.logged_metrics`` (what Lightning hands its loggers; ``self.log(...,
logger=False)`` values are not in it) is a cumulative dict; a value is new when its tensor does
not share storage with the one seen under that name before (Lightning makes a new tensor for
every value: a ``clone()`` per step, a fresh ``compute()`` per epoch). It is read only where
Lightning has finished with the values, so the callback never makes Lightning compute an epoch
aggregate early (under ``sync_dist=True`` that would be a collective out of turn):
- step values at ``on_train_batch_end``, at the step of the batch (the run's step before the
  optimizer step, as autolog's ``train/loss``), with ``epoch`` and Lightning's ``global_step``
  after the step; values the module logs in its own
  ``on_train_batch_end`` at the next batch start (or validation start, or epoch end) at that same
  step; batches that only accumulate gradients are skipped, as Lightning's loggers skip them;
- validation/test aggregates at ``on_validation_end``/``on_test_end`` (not the sanity check's),
  at the number of optimizer steps completed; per-batch evaluation values are not recorded;
- training epoch aggregates (also what the module logs in ``on_train_epoch_end``) at the next
  ``on_train_epoch_start`` and at ``on_train_end``, at the number of optimizer steps completed.
Steps are the run's: optimizer steps completed, counted by autolog's capture, which agrees with
``trainer.global_step`` for one optimizer without skipped (AMP inf/NaN) steps. In a joined run,
``fit``'s steps follow the run's earlier ones. With ``capture=False`` the steps are Lightning's
``global_step``, shifted the same way.

Resuming: whenever Lightning saves a checkpoint during ``fit`` (``ModelCheckpoint``,
``trainer.save_checkpoint``), the callback first makes sure the run's log holds everything
recorded so far, then writes ``<checkpoint file>.autolog.json`` beside it (``{"run_id",
"project", "run_path", "step", "log_offset"}``). ``fit(ckpt_path=<that file>)`` (or "last") then
continues that run at the checkpoint's global step: the earlier attempt's points at steps >= it
that were recorded after the checkpoint are superseded, those recorded before it (the epoch's
and validation's values at that step) stay. A checkpoint without the file starts a new run at
step 0 (its steps follow Lightning's global_step shifted to start there); so does one whose run
is gone, with a note on stderr. ``resume=`` given to the callback wins. TensorBoard's purge works
by step: in a TensorBoard sink, values recorded at the checkpoint's step before it are dropped.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, Iterable, Mapping

import torch

import autolog

from autolog.capture.patches import session as capture_session
from autolog.core.config import flatten
from autolog.core.run import current
from autolog.integrations import _trainer as trainer_mod

__all__ = ["AutologCallback"]

_STAGES = ("fit", "validate", "test")


def _callback_bases() -> tuple[type, ...]:
    """``Callback`` of every installed Lightning flavour, so one class serves ``lightning.pytorch``
    and ``pytorch_lightning`` trainers alike (they are the same code under two names)."""
    bases: list[type] = []
    error: BaseException | None = None
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(module).Callback)
        except Exception as exc:  # noqa: BLE001 -- a broken second flavour must not hide the first
            error = error or exc
    if not bases:
        raise ImportError("autolog.integrations.lightning needs PyTorch Lightning: "
                          "pip install 'autolog[lightning]'") from error
    return tuple(bases)


class AutologCallback(*_callback_bases()):  # type: ignore[misc]
    """Record a Lightning run with autolog: ``Trainer(callbacks=[AutologCallback(...)])``.

    project, name, dir, sinks, log_every, config, tags, capture, redact, mode, and any other
    keyword (``flush_secs``, ``close_timeout``, ...) are `autolog.run`'s options. ``log_every``
    defaults to ``$AUTOLOG_LOG_EVERY``, else the trainer's ``log_every_n_steps``; ``sinks`` to
    ``$AUTOLOG_SINKS``, else autolog's default without "console" while Lightning shows its own
    progress bar. ``config`` is merged over the hyperparameters. watch: ``autolog.watch(pl_module,
    log=watch, **watch_options)`` at ``on_fit_start`` ("gradients", "parameters", "all", or None:
    no watch). After ``fit``, ``callback.run`` is the run (``callback.run.path`` its directory).
    """

    def __init__(self, project: str | None = None, name: str | None = None, dir: str | os.PathLike | None = None,
                 sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
                 config: Mapping[str, Any] | Any = None, tags: Iterable[str] = (), capture: Any = None,
                 redact: Iterable[Any] | None = None, mode: str | None = None,
                 watch: str | None = "gradients", watch_options: Mapping[str, Any] | None = None,
                 **run_options: Any) -> None:
        self.run_options: dict[str, Any] = trainer_mod.run_options(
            "AutologCallback", watch, watch_options, project=project, name=name, dir=dir, sinks=sinks,
            log_every=log_every, config=config, tags=tags, capture=capture, redact=redact, mode=mode,
            **run_options)
        self.watch = watch
        self.watch_options = dict(watch_options or {})
        self.run: Any = None  # the run of the current (else the last) stage: Run, NullRun, or a joined run
        self._stage: str | None = None
        self._owned = False
        self._records = False
        self._seen: dict[str, torch.Tensor] = {}
        self._step_names: set[str] = set()
        self._offset = 0
        self._counting = False
        self._batch_step: int | None = None
        self._batch_global: int | None = None
        self._tail_step: int | None = None
        self._marker: tuple[str, int] | None = None  # the checkpoint saved at this epoch's end, if any

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (``strategy="ddp_spawn"`` sends callbacks to its workers): the options only."""
        state = self.__dict__.copy()
        state.update(run=None, _stage=None, _owned=False, _records=False, _counting=False, _seen={},
                     _step_names=set(), _batch_step=None, _batch_global=None, _tail_step=None, _marker=None)
        return state

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))
        if stage not in _STAGES or self._stage is not None:
            return
        _warn_default_logger(trainer)
        options = dict(self.run_options)
        checkpoint = _restoring_checkpoint() if stage == "fit" else None
        resuming = checkpoint is not None and options.get("resume") is None and current() is None \
            and trainer_mod.read_marker(checkpoint) is not None
        if resuming:  # the run, the step and the log position come from the checkpoint's marker
            options["resume"] = os.fspath(checkpoint)
        self.run, self._owned, self._records = trainer_mod.open_run(
            options, _config(trainer, pl_module, self.run_options["config"]),
            log_every=getattr(trainer, "log_every_n_steps", 0),
            progress_bar=getattr(trainer, "progress_bar_callback", None) is not None, fallback=resuming)
        self._stage = stage
        # autolog's capture counts the run's optimizer steps (run.capture is set by autolog.capture)
        self._counting = getattr(self.run, "capture", None) is not None
        self._seen, self._step_names, self._offset, self._batch_step, self._tail_step = {}, set(), 0, None, None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Everything recorded so far goes to the run's log, and ``<checkpoint>.autolog.json``
        (this run, the global step, the log's size) is written beside the checkpoint file, so that
        ``fit(ckpt_path=<checkpoint>)`` continues this run there."""
        if not self._records or self._stage != "fit":
            return
        filepath = _saving_to()
        if filepath is not None:
            self._mark(filepath, trainer.global_step)
            # Saved at an epoch's end: the epoch's aggregates reach trainer.logged_metrics only after
            # this; they are read at the next epoch start, which then moves the marker past them.
            self._marker = (filepath, trainer.global_step)

    def _mark(self, filepath: str, step: int) -> None:
        try:
            self.run.flush(wait="log")
            trainer_mod.write_marker(os.path.dirname(filepath) or ".", self.run, step,
                                     file=f"{filepath}.{trainer_mod.MARKER}")
        except Exception as exc:  # noqa: BLE001 -- a checkpoint must never fail because of autolog
            trainer_mod.report_once("AutologCallback", self.run, "checkpoint", exc, "mark the checkpoint")

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._stage == "fit" and self.watch is not None:
            autolog.watch(pl_module, log=self.watch, **self.watch_options)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if str(getattr(stage, "value", stage)) == self._stage:
            self._end(None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._end(exception)

    def _end(self, exc: BaseException | None) -> None:
        """Finish the run we started (a joined run ends with its owner), with `exc`'s status."""
        if self._stage is None:
            return
        self._stage, self._records, self._seen = None, False, {}
        trainer_mod.end_run("AutologCallback", self.run, self._owned, exc)

    # ------------------------------------------------------------------ steps
    def _now(self, trainer: Any) -> int:
        """The run's step: autolog's count of optimizer steps when its capture counts them, so every
        series of the run shares one axis (Lightning's global_step also counts AMP-skipped steps and
        every optimizer's steps); else Lightning's global_step, shifted to start at the run's step."""
        return self.run.step if self._counting else trainer.global_step + self._offset

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # After checkpoint restore: a resumed trainer's global_step maps to this run's steps.
        self._offset = self.run.step - trainer.global_step if self._records else 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        capture = capture_session() if self._counting else None
        if capture is not None:  # the batch's samples, for perf/samples_per_sec
            capture.add_batch(batch)
        if not self._records:
            return
        self._read(trainer, self._tail_step, step_values=True)  # logged by the module's on_train_batch_end
        self._tail_step = None
        self._batch_step, self._batch_global = self._now(trainer), trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._records or self._batch_step is None:
            return
        # Like Lightning's loggers, values of a batch that only accumulates gradients are skipped.
        stepped = trainer.global_step != self._batch_global or not pl_module.automatic_optimization
        step = self._batch_step if stepped else None
        extra = {"epoch": float(trainer.current_epoch), "global_step": float(trainer.global_step)}
        self._read(trainer, step, extra, step_values=True)
        self._tail_step = step

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_values(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_values(trainer)

    def _epoch_values(self, trainer: Any) -> None:
        if self._records:
            self._read(trainer, self._now(trainer), tail_step=self._tail_step)
            self._tail_step = None
            marker, self._marker = self._marker, None
            if marker is not None and marker[1] == trainer.global_step:  # nothing trained since the save
                self._mark(*marker)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "validate")

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, "test")

    def _eval_start(self, trainer: Any, stage: str) -> None:
        if not self._records:
            return
        if self._stage == stage:
            self._offset = self.run.step - trainer.global_step
        elif self._tail_step is not None:
            self._read(trainer, self._tail_step, step_values=True)
            self._tail_step = None

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self._eval_batch_end(trainer)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self._eval_batch_end(trainer)

    def _eval_batch_end(self, trainer: Any) -> None:
        # Per-batch evaluation values (on_step=True) have no training step of their own: they are
        # marked seen here, and only their aggregates are recorded at the end.
        if self._records:
            self._read(trainer, None)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._eval_end(trainer)

    def _eval_end(self, trainer: Any) -> None:
        if self._records:
            self._read(trainer, None if trainer.sanity_checking else self._now(trainer))

    # ------------------------------------------------------------------ reading metrics
    def _read(self, trainer: Any, step: int | None, extra: dict[str, float] | None = None,
              tail_step: int | None = None, step_values: bool = False) -> None:
        """Record the values Lightning logged since the last read at `step` (None: mark them seen).

        step_values: they are per-step values (their names are remembered). tail_step: the step of
        the last training batch, for the per-step names among the values (a batch's values logged
        after this callback's on_train_batch_end, read together with the epoch's aggregates).
        """
        try:
            fresh = self._fresh(trainer.logged_metrics)
            if step_values:
                self._step_names.update(fresh)
            if tail_step is not None:
                tail = {name: fresh.pop(name) for name in list(fresh) if name in self._step_names}
                if tail:
                    self.run.log(tail, step=tail_step)
            if step is not None and (fresh or extra):
                self.run.log({**(extra or {}), **fresh}, step=step)
        except Exception as exc:  # noqa: BLE001 -- never break the user's training
            trainer_mod.report_once("AutologCallback", self.run, "lightning", exc, "record Lightning's metrics")

    def _fresh(self, logged: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        fresh = {}
        for name, value in logged.items():
            if not isinstance(value, torch.Tensor):
                continue
            seen = self._seen.get(name)
            if seen is None or not _same_storage(seen, value):
                fresh[name] = value
        self._seen = {k: v for k, v in logged.items() if isinstance(v, torch.Tensor)}  # kept alive: no reuse
        return fresh


def _restoring_checkpoint() -> str | None:
    """The checkpoint ``fit`` restores (``ckpt_path``, resolved by Lightning), from setup."""
    path = trainer_mod.caller_local("ckpt_path", "_run")
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) and os.path.isfile(path) else None


def _saving_to() -> str | None:
    """The file ``Trainer.save_checkpoint`` is writing, from on_save_checkpoint."""
    path = trainer_mod.caller_local("filepath", "save_checkpoint")
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else None


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether `b` is (a view of) the value `a` was: Lightning's ``detach()`` copies of one value."""
    if a is b:
        return True
    try:
        return a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and a.data_ptr() == b.data_ptr()
    except RuntimeError:  # tensors without storage (fake, meta): compare by identity only
        return False


def _config(trainer: Any, pl_module: Any, extra: Any) -> dict[str, Any]:
    """Trainer settings (``trainer.*``), then datamodule and module hyperparameters, then `extra`."""
    out: dict[str, Any] = {}
    settings = {key: getattr(trainer, key, None) for key in
                ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision",
                 "world_size")}
    settings["strategy"] = type(getattr(trainer, "strategy", None)).__name__
    settings["accelerator"] = type(getattr(trainer, "accelerator", None)).__name__
    flatten(settings, "trainer", out)
    datamodule = getattr(trainer, "datamodule", None)
    for source in (getattr(datamodule, "hparams", None), getattr(pl_module, "hparams", None), extra):
        if source is not None:
            flatten(source, "", out)
    return out


def _is_default_logger(trainer: Any) -> bool:
    """Whether the trainer's only logger looks like the one Lightning adds when ``logger`` is not
    given (it may also be one the user made the same way: only a warning depends on this)."""
    loggers = list(getattr(trainer, "loggers", None) or [])
    if len(loggers) != 1:
        return False
    logger = loggers[0]
    cls = type(logger)
    if cls.__name__ not in ("TensorBoardLogger", "CSVLogger") or \
            not cls.__module__.startswith(("lightning.pytorch.loggers", "pytorch_lightning.loggers")):
        return False
    try:
        return (logger.name == "lightning_logs"
                and os.path.abspath(os.fspath(logger.save_dir)) == os.path.abspath(os.fspath(trainer.default_root_dir)))
    except Exception:  # noqa: BLE001 -- an odd logger is not the default one
        return False


def _warn_default_logger(trainer: Any) -> None:
    if getattr(trainer, "global_rank", 0) != 0 or not _is_default_logger(trainer):
        return
    warnings.warn(f"AutologCallback: Lightning's default {type(trainer.loggers[0]).__name__} also writes to "
                  f"{os.path.join(trainer.default_root_dir, 'lightning_logs')} and converts every logged tensor "
                  "with .item(); pass Trainer(logger=False) to make autolog the only logger.", stacklevel=2)
