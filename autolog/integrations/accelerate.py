"""Hugging Face Accelerate: `AutologTracker` is an ``accelerate`` tracker that records the job as
one autolog run, with autolog's automatic capture.

    from autolog.integrations.accelerate import AutologTracker

    accelerator = Accelerator(log_with=[AutologTracker(sinks=["local", "tensorboard"])])
    accelerator.init_trackers("my-project", config={"lr": lr})    # the run opens
    ...                                                           # train: loss, lr, ... captured
    accelerator.log({"val/acc": acc}, step=step)                  # your own values
    accelerator.end_training()                                     # the run ends ``finished``

Importing this module also registers the name, so ``Accelerator(log_with="autolog")`` works
(accelerate >= 1.15, ``register_tracker_class``; on 1.8–1.14 pass the instance); options then come from
``init_trackers(..., init_kwargs={"autolog": {...}})``.

- One run per job: Accelerate opens trackers and logs on the main process only, so rank 0
  holds the run and the other processes hold none (they write nothing). Values logged with
  ``sync_dist=True`` need a run on every rank: use ``autolog.run``/``@autolog.track`` in every
  process for them, not this tracker.
- The project is ``project=``, else ``init_trackers``' ``project_name``; the config is
  ``init_trackers``' ``config`` (flattened, secrets redacted) merged over ``config=``.
- ``accelerator.log(values, step=None)``: numbers and one-element tensors are scalars (nested
  dicts flattened with ``/``), strings texts; without ``step``, at autolog's step (optimizer
  steps completed; with ``accelerator.accumulate`` the steps that really update).
- The run ends ``finished`` at ``end_training()``. An exception that leaves the script marks it
  ``failed`` (autolog's exception hook), Ctrl-C and SIGTERM ``interrupted``, as for any run.
- Inside an open run (``@autolog.track`` around the training function) the tracker joins it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from autolog.integrations import _trainer as trainer_mod

try:
    from accelerate.tracking import GeneralTracker
except ImportError as exc:  # pragma: no cover -- the extra is not installed
    raise ImportError("autolog.integrations.accelerate needs Hugging Face Accelerate: "
                      "pip install 'autolog[accelerate]'") from exc

__all__ = ["AutologTracker"]

_OWNER = "AutologTracker"


class AutologTracker(GeneralTracker):
    """An ``accelerate`` tracker writing one autolog run: ``Accelerator(log_with=[AutologTracker()])``.

    project and the keywords (name, dir, sinks, log_every, config, tags, capture, redact, mode,
    flush_secs, ...) are `autolog.run`'s options. ``tracker.run`` (also ``tracker.tracker``) is the
    run once ``init_trackers`` has opened it.
    """

    name = "autolog"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, project: str | None = None, *, name: str | None = None, dir: Any = None,
                 sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
                 config: Mapping[str, Any] | Any = None, tags: Iterable[str] = (), capture: Any = None,
                 redact: Iterable[Any] | None = None, mode: str | None = None, **run_options: Any) -> None:
        super().__init__()
        self.run_options = trainer_mod.run_options(
            _OWNER, None, None, project=project, name=name, dir=dir, sinks=sinks, log_every=log_every,
            config=config, tags=tags, capture=capture, redact=redact, mode=mode, **run_options)
        self.run: Any = None  # the run while open, then the last one (its path stays readable)
        self._open = False
        self._owned = False

    @property
    def tracker(self) -> Any:
        return self.run

    def start(self) -> None:
        if self._open:
            return
        options = dict(self.run_options)
        if options["project"] is None:
            options["project"] = _init_trackers_project()
        self.run, self._owned, _records = trainer_mod.open_run(options, options["config"] or {})
        self._open = True

    def store_init_configuration(self, values: dict) -> None:
        if self._open and values:
            self.run.update_config(values)

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Scalars (numbers, one-element tensors, nested dicts) and texts (strings) at `step`."""
        if not self._open:
            return
        if not isinstance(values, Mapping):
            raise TypeError(f"{_OWNER}.log: values: expected a dict, got {type(values).__name__}")
        texts = {k: v for k, v in values.items() if isinstance(v, str)}
        scalars = {k: v for k, v in values.items() if not isinstance(v, str)}
        if scalars:
            self.run.log(scalars, step=step)
        for key, text in texts.items():
            self.run.log_text(key, text, step=step)

    def finish(self) -> None:
        if self._open:
            self._open = False
            trainer_mod.end_run(_OWNER, self.run, self._owned, None)


def _init_trackers_project() -> str | None:
    """``project_name`` of the ``Accelerator.init_trackers`` call that is starting this tracker
    (Accelerate hands it only to trackers it builds from a name), or None."""
    project = trainer_mod.caller_local("project_name", "init_trackers", depth=6)
    return project if isinstance(project, str) and project else None


def _register() -> None:
    try:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, register_tracker_class
    except ImportError:  # an accelerate without registration: log_with=[AutologTracker()] still works
        return
    if LOGGER_TYPE_TO_CLASS.get(AutologTracker.name) is not AutologTracker:
        register_tracker_class(AutologTracker)


_register()
