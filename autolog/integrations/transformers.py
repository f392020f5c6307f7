"""Hugging Face Transformers: `AutologCallback` records a ``Trainer`` run with autolog.

    from autolog.integrations.transformers import AutologCallback

    trainer = Trainer(model=model, args=TrainingArguments(..., report_to="none"),
                      train_dataset=train, eval_dataset=val, callbacks=[AutologCallback(project="glue")])
    trainer.train()

One autolog run per ``train()`` (inside an open run -- a train function under ``@autolog.track``
calling ``trainer.train()`` -- the callback joins that run):

- config: ``TrainingArguments`` under ``args.`` (``hub_token`` and every other secret redacted),
  the model's config under ``model.``, ``model.class``, ``model.num_parameters`` and
  ``model.trainable_parameters``; ``config=`` merged over them;
- every value the Trainer logs (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, ``eval_*``,
  ``train_runtime``, ...), under the Trainer's own names, at the Trainer's ``global_step`` (the
  number of optimizer steps completed when it logged, which is autolog's step then; a value the
  Trainer logs twice at one step, such as ``epoch`` with the evaluation, is recorded once);
- automatic capture as in a plain loop (``train/loss``, ``train/grad_norm``, ``optim/lr``,
  ``perf/*``) and ``autolog.watch(model, log=watch)``. autolog's own series sit at the step of
  the optimizer step they belong to (steps completed *before* it), the Trainer's at the count
  *after* it: the Trainer's ``grad_norm`` logged at global step g is ``train/grad_norm`` at g - 1,
  and with ``logging_steps=1`` its ``loss`` is ``train/loss`` at g - 1;
- the final status: ``finished``, ``failed`` with the exception, ``interrupted`` on Ctrl-C.
  The Trainer tells callbacks nothing when ``train()`` raises, so the callback wraps the
  ``train`` method of the Trainer it is given to (``Trainer(callbacks=[...])``: it finds the
  Trainer when the Trainer announces ``on_init_end``). A callback added later with
  ``trainer.add_callback`` records the status from the next ``train()`` on; the first one ends
  ``finished`` at ``on_train_end``, or, when it raised, when the process exits.
- under ``torchrun`` / ``accelerate launch`` one run per job: rank 0 writes it, the other ranks'
  runs write nothing (autolog's distributed rule).
- resuming: at every checkpoint the Trainer saves, the callback first makes sure the run's log
  holds everything recorded so far, then writes ``autolog.json`` into the checkpoint folder
  (``{"run_id", "project", "run_path", "step"}``). ``train(resume_from_checkpoint=...)`` (a path,
  or True) from such a checkpoint continues that run -- ``resume=<run_path>``,
  ``resume_step=<global_step>``: same id, the earlier attempt's points at steps >= the
  checkpoint's superseded -- and records again what the Trainer logged at the checkpoint's step
  (from the checkpoint's log history). A checkpoint without the file starts a new run (so does one
  whose run is gone, with a note on stderr); ``resume=`` given to the callback wins.

Pass ``report_to="none"`` so that the Trainer does not also start the W&B/TensorBoard loggers
it finds installed; autolog's sinks (``sinks=["local", "tensorboard", "wandb"]``) write those.
While the Trainer shows its progress bar (``disable_tqdm=False``) the console sink is left out of
the default sinks; ``log_every`` defaults to ``$AUTOLOG_LOG_EVERY``, else ``logging_steps``.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from typing import Any, Iterable, Mapping

import autolog

from autolog.core.config import flatten
from autolog.core.run import current
from autolog.integrations import _trainer as trainer_mod
from autolog.integrations._trainer import read_marker, write_marker

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as exc:  # pragma: no cover -- the extra is not installed
    raise ImportError("autolog.integrations.transformers needs Hugging Face Transformers: "
                      "pip install 'autolog[transformers]'") from exc

__all__ = ["AutologCallback"]

_OWNER = "AutologCallback"


class AutologCallback(TrainerCallback):
    """Record a ``Trainer`` run with autolog: ``Trainer(..., callbacks=[AutologCallback(...)])``.

    project, name, dir, sinks, log_every, config, tags, capture, redact, mode, and any other
    keyword (``flush_secs``, ``close_timeout``, ...) are `autolog.run`'s options. watch:
    ``autolog.watch(model, log=watch, **watch_options)`` when training begins ("gradients",
    "parameters", "all", or None: no watch). After ``train()``, ``callback.run`` is the run
    (``callback.run.path`` its directory).
    """

    def __init__(self, project: str | None = None, name: str | None = None, dir: Any = None,
                 sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
                 config: Mapping[str, Any] | Any = None, tags: Iterable[str] = (), capture: Any = None,
                 redact: Iterable[Any] | None = None, mode: str | None = None,
                 watch: str | None = "gradients", watch_options: Mapping[str, Any] | None = None,
                 **run_options: Any) -> None:
        self.run_options: dict[str, Any] = trainer_mod.run_options(
            _OWNER, watch, watch_options, project=project, name=name, dir=dir, sinks=sinks,
            log_every=log_every, config=config, tags=tags, capture=capture, redact=redact, mode=mode,
            **run_options)
        self.watch = watch
        self.watch_options = dict(watch_options or {})
        self.run: Any = None  # the run of the current (else the last) train(): Run, NullRun or a joined run
        self._open = False
        self._owned = False
        self._records = False
        self._offset = 0  # run step - global_step: nonzero in a joined run with earlier steps
        self._last: dict[str, tuple[int, float]] = {}  # name -> (step, value) last recorded

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (hyperparameter search sends callbacks to workers): the options only."""
        state = self.__dict__.copy()
        state.update(run=None, _open=False, _owned=False, _records=False, _last={})
        return state

    # ------------------------------------------------------------------ lifecycle
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _announcing_trainer()
        if trainer is not None:
            _wrap_train(trainer, self)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._open:
            return
        try:
            config = _config(args, model, self.run_options["config"])
        except Exception as exc:  # noqa: BLE001 -- an odd model or args: the run goes on without them
            config = flatten(self.run_options["config"]) if self.run_options["config"] is not None else {}
            print(f"autolog: {_OWNER} could not read the Trainer's config: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        options = dict(self.run_options)
        marker = _resumed_from()
        if marker is not None and options.get("resume") is None and current() is None:
            options.update(resume=marker["run_path"], resume_step=state.global_step)
        self.run, self._owned, self._records = trainer_mod.open_run(
            options, config, log_every=_log_every(args, state),
            progress_bar=not getattr(args, "disable_tqdm", True), fallback=marker is not None)
        self._open = True
        self._last = {}
        self._offset = self.run.step - state.global_step if self._records else 0
        if self.watch is not None and model is not None:
            autolog.watch(model, log=self.watch, **self.watch_options)
        if marker is not None and getattr(self.run, "resumed", False):
            # What the Trainer logged at the checkpoint's step is superseded with the rest of the
            # earlier attempt's steps >= it; the checkpoint's own log history has it: again.
            for entry in getattr(state, "log_history", None) or []:
                if isinstance(entry, dict) and entry.get("step") == state.global_step:
                    self.on_log(args, state, control, logs={k: v for k, v in entry.items() if k != "step"})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The checkpoint the Trainer just wrote gets ``autolog.json`` (this run and the step), so
        that ``train(resume_from_checkpoint=...)`` continues this run; and everything recorded so
        far is in the run's log first, so a kill after the checkpoint loses nothing before it."""
        if not self._records:
            return
        try:
            self.run.flush(wait="log")
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                write_marker(folder, self.run, state.global_step)
        except Exception as exc:  # noqa: BLE001 -- a checkpoint must never fail because of autolog
            trainer_mod.report_once(_OWNER, self.run, "checkpoint", exc, "mark the checkpoint")

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not self._records or not logs:
            return
        try:
            step = state.global_step + self._offset
            fresh = {}
            for name, value in logs.items():
                if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue  # the Trainer logs numbers; anything else is not a scalar series
                value = float(value)
                if _repeated(self._last.get(name), step, value):
                    continue  # logged again at this step (``epoch`` with the evaluation)
                self._last[name] = (step, value)
                fresh[name] = value
            if fresh:
                self.run.log(fresh, step=step)
        except Exception as exc:  # noqa: BLE001 -- never break the user's training
            trainer_mod.report_once(_OWNER, self.run, "Trainer", exc, "record the Trainer's metrics")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        """Finish the run we started (a joined run ends with its owner), with `exc`'s status."""
        if not self._open:
            return
        self._open, self._records = False, False
        trainer_mod.end_run(_OWNER, self.run, self._owned, exc)


def _repeated(last: tuple[int, float] | None, step: int, value: float) -> bool:
    return last is not None and last[0] == step and (last[1] == value or (math.isnan(last[1]) and math.isnan(value)))


def _announcing_trainer() -> Any:
    """The ``Trainer`` whose ``__init__`` is calling ``on_init_end``, or None."""
    from transformers import Trainer

    return trainer_mod.caller_local("self", "__init__", accept=lambda value: isinstance(value, Trainer))


def _wrap_train(trainer: Any, callback: AutologCallback) -> None:
    """Make ``trainer.train`` end `callback`'s run with the status of the exception that leaves
    it (the same exception, re-raised unchanged)."""
    original = trainer.train
    if getattr(original, "__autolog_callback__", None) is callback:
        return

    @functools.wraps(original)
    def train(*args: Any, **kwargs: Any) -> Any:
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            callback._end(exc)
            raise
        callback._end(None)
        return result

    train.__autolog_callback__ = callback  # type: ignore[attr-defined]
    trainer.train = train


def _resumed_from() -> dict[str, Any] | None:
    """autolog's marker in the checkpoint the running ``train()`` resumes from, or None (the
    ``resume_from_checkpoint`` of the Trainer's ``_inner_training_loop``, already resolved from
    True to the last checkpoint's path)."""
    path = trainer_mod.caller_local("resume_from_checkpoint", "_inner_training_loop",
                                    accept=lambda value: isinstance(value, (str, os.PathLike)))
    return read_marker(path) if path is not None else None


def _log_every(args: Any, state: Any) -> int | None:
    """The Trainer's logging interval in steps (``logging_steps`` below 1 is a fraction of
    ``max_steps``, as the Trainer reads it)."""
    steps = getattr(args, "logging_steps", None)
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps <= 0:
        return None
    if steps < 1:
        total = getattr(state, "max_steps", 0) or 0
        return max(1, math.ceil(total * steps)) if total > 0 else None
    return int(steps)


def _config(args: Any, model: Any, extra: Any) -> dict[str, Any]:
    """``args.*`` (TrainingArguments), ``model.*`` (the model's config, class, parameter counts),
    then `extra` (``config=``)."""
    out: dict[str, Any] = {}
    if args is not None:
        flatten(args.to_dict() if hasattr(args, "to_dict") else vars(args), "args", out)
    if model is not None:
        config = getattr(model, "config", None)
        if config is not None:
            flatten(config.to_dict() if hasattr(config, "to_dict") else config, "model", out)
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        out["model.class"] = type(model).__name__
        out["model.num_parameters"] = sum(p.numel() for p in params)
        out["model.trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)
    if extra is not None:
        flatten(extra, "", out)
    return out
