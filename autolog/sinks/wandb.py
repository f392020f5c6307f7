"""Weights & Biases sink: one W&B run per autolog run, written through that run object only.

What goes where:

- ``wandb.init`` gets the project (the sink's, else autolog's), the run's name and tags, the
  captured config with its flattened ``"a.b"`` keys kept as they are (the W&B UI shows nested
  config as ``a.b`` too, and flat keys cannot collide), ``dir=<run dir>`` so the W&B files live
  in ``<run dir>/wandb/``, and autolog's run id as the W&B run id, so that replaying a run
  targets the same W&B run. System metrics, console capture, code and requirements saving are
  off; any ``wandb.init`` argument or setting given to the sink wins over these defaults.
- Every scalar, histogram (``wandb.Histogram`` from autolog's precomputed bins) and image or
  figure (``wandb.Image``) of one step goes into one history row, ``run.log(row, step=step)``,
  steps ascending. Text, and the printed form of a model graph, is a ``wandb.Html`` ``<pre>``
  block (shown in a media panel with a step slider); a TensorBoard GraphDef has no W&B panel and
  is skipped. W&B's ``_timestamp`` is the time the row was written, not the capture time.
- W&B history only moves forward: a point whose step is below the highest step already logged
  is dropped (the local store keeps it), with one warning per sink and a count in
  `WandbSink.dropped_points`. Points of the step last logged still join that row.
- Config updates: ``run.config.update(..., allow_val_change=True)``. At close the final summary
  goes into ``run.summary`` and ``run.finish(exit_code=...)``: 0 finished, 1 failed, 255
  interrupted (what W&B itself records for Ctrl-C); W&B shows every non-zero code as failed.

The sink never reads or sets the global ``wandb.run`` (``reinit="create_new"``; wandb >= 0.19.10)
and never calls ``wandb.log`` or ``wandb.watch``, so a W&B run owned by the user or another
library is left as it was. Mode: the sink's ``mode``, else ``"offline"`` when autolog runs
offline, else W&B's own default (``WANDB_MODE`` honoured).

Process-level care: ``close`` returns once the W&B transaction log is complete on disk (wandb's
``finish`` returns a little before that), so ``wandb sync`` or `autolog.wandb_records` can read
it at once; a run still open at interpreter exit is ended before W&B's service shuts down; and
the excepthook W&B's service installs does not make uncaught exceptions print twice.
"""
from __future__ import annotations

import atexit
import html
import glob
import os
import re
import sys
import warnings
from collections import defaultdict
from typing import Any

from autolog.pipeline.records import Batch, MediaRecord, RunInfo, RunResult
from autolog.sinks.base import Sink

EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 255}

# quiet and cheap: no system metrics sampler, no stdout/stderr capture, no code or pip snapshot,
# no cloud machine-info probes
DEFAULT_SETTINGS: dict[str, Any] = {
    "x_disable_stats": True,
    "x_disable_machine_info": True,
    "console": "off",
    "save_code": False,
    "x_save_requirements": False,
    "disable_job_creation": True,
    "silent": True,
}

CLOSE_TIMEOUT = 10.0  # seconds `close` waits for wandb-core to write the run's last records

_BAD_ID = re.compile(r"[:;,#?/'\\%\s]+")
_MAX_TAG = 64


def wandb_run_id(run_id: str) -> str | None:
    """autolog's run id made valid for W&B (no ``:;,#?/'`` etc.); None if nothing is left."""
    return _BAD_ID.sub("-", run_id).strip("-")[:128] or None


def _settings_dict(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    if isinstance(settings, dict):
        return dict(settings)
    fields = getattr(settings, "model_fields_set", None)  # a wandb.Settings (pydantic)
    if fields is None:
        raise TypeError(f"WandbSink: settings must be a dict or wandb.Settings, got {settings!r}")
    return {k: getattr(settings, k) for k in fields}


def _finish_autolog_runs() -> None:
    """At interpreter exit: end autolog's open runs while W&B's service still listens."""
    finish_all = getattr(sys.modules.get("autolog.core.run"), "_at_exit", None)
    if callable(finish_all):
        finish_all()


def _end_runs_before_wandb_teardown() -> None:
    """Exit handlers run last-registered first, and W&B registers its service teardown at the
    first ``wandb.init``, after autolog's own handler: a run still open at exit would then close
    its W&B run after the service is gone ("Connection lost"), losing the last rows and the
    summary. Registering autolog's run finisher again, after W&B's, puts it first."""
    atexit.unregister(_finish_autolog_runs)
    atexit.register(_finish_autolog_runs)


def _keep_one_traceback(before: Any) -> None:
    """Undo a double traceback that starting W&B's service would cause.

    The first ``wandb.init`` of a process installs a ``sys.excepthook`` that prints the traceback
    and then calls the hook it replaced; when that was not Python's default (autolog's own hook,
    an IDE's...), an uncaught exception is printed twice. Here that hook is replaced by one that
    records the exit code for W&B the same way and leaves printing to the previous hook.
    """
    hook = sys.excepthook
    owner = getattr(hook, "__self__", None)
    previous = getattr(owner, "_orig_excepthook", None)
    if hook is before or type(owner).__name__ != "ExitHooks" or previous is None:
        return

    def excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
        owner.exit_code = 255 if issubclass(exc_type, KeyboardInterrupt) else 1
        owner.exception = exc
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook


def _text_html(text: str) -> Any:
    import wandb

    return wandb.Html(f"<pre>{html.escape(text)}</pre>", inject=False)


def _media_value(record: MediaRecord, run_dir: str) -> Any:
    """The W&B object for one media record, or None for kinds W&B cannot show."""
    import wandb

    if record.kind in ("image", "figure"):
        if record.data is not None:
            return wandb.Image(record.data)
        if record.path:
            return wandb.Image(os.path.join(run_dir, record.path))
        return None
    if record.kind == "text":
        return _text_html(str(record.data))
    if record.kind == "graph" and isinstance(record.data, dict) and record.data.get("text"):
        return _text_html(record.data["text"])
    return None


class WandbSink(Sink):
    """Writes a run to Weights & Biases (extra ``autolog[wandb]``).

    `project`, `entity` and `mode` go to ``wandb.init``; so does every other keyword (``group``,
    ``job_type``, ``notes``, ``resume``, ``settings`` merged over the sink's defaults...). The W&B
    run object is `wandb_run` once the sink is open.
    """

    name = "wandb"

    def __init__(self, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, **init_kwargs: Any) -> None:
        self.project = project
        self.entity = entity
        self.mode = mode
        self.init_kwargs = init_kwargs
        self.wandb_run: Any = None
        self.dropped_points = 0
        self._run_dir = ""
        self._step = 0  # highest step W&B has seen; lower steps are rejected by W&B

    def init_args(self, run: RunInfo) -> dict[str, Any]:
        """The keyword arguments `open` gives ``wandb.init``."""
        mode = self.mode or (run.mode if run.mode == "offline" else None)
        extra = dict(self.init_kwargs)
        settings = {**DEFAULT_SETTINGS, **_settings_dict(extra.pop("settings", None))}
        args: dict[str, Any] = {
            "project": self.project or run.project,
            "entity": self.entity,
            "name": run.name,
            "id": wandb_run_id(run.id),
            "config": dict(run.config),
            "tags": [t[:_MAX_TAG] for t in run.tags if t],
            "dir": run.path,
            "mode": mode,
            "reinit": "create_new",
            "settings": settings,
        }
        if run.resumed and run.meta.get("attempts"):
            args["resume"] = "allow"  # a resumed run goes on in its W&B run (offline: `wandb sync` later)
        args.update(extra)
        return args

    def existing_output(self, run: RunInfo) -> str | None:
        run_id = wandb_run_id(run.id) or ""
        pattern = os.path.join(glob.escape(os.path.join(run.path, "wandb")), f"*run-*-{glob.escape(run_id)}")
        if glob.glob(pattern):
            return (f"{run.path}/wandb already holds a W&B run with id {run_id!r} (from the live run "
                    f"or an earlier replay); add another anyway with --force")
        return None

    def open(self, run: RunInfo) -> None:
        import wandb

        self._run_dir = run.path
        os.makedirs(run.path, exist_ok=True)  # W&B falls back to a temp dir when `dir` is missing
        before = sys.excepthook
        self.wandb_run = wandb.init(**self.init_args(run))
        _keep_one_traceback(before)
        _end_runs_before_wandb_teardown()
        self._step = int(getattr(self.wandb_run, "step", 0) or 0)

    def write(self, batch: Batch) -> None:
        import wandb

        run = self.wandb_run
        if run is None:
            raise RuntimeError("WandbSink.write outside open()..close(): no W&B run is open")
        if batch.config:
            run.config.update(dict(batch.config), allow_val_change=True)
        rows: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, step, value, _wall in batch.scalars:
            rows[int(step)][name] = value
        for h in batch.histograms:
            hist = wandb.Histogram(np_histogram=(list(h.counts), list(h.edges)))
            rows[int(h.step)][h.name] = hist
        for m in batch.media:
            value = _media_value(m, self._run_dir)
            if value is not None:
                rows[int(m.step)][m.name] = value
        for step in sorted(rows):
            if step < self._step:
                self._drop(step, len(rows[step]))
                continue
            run.log(rows[step], step=step)
            self._step = step

    def backend(self) -> Any:
        """The sink's W&B run (``wandb.Run``) while it is open, else None. The sink's thread
        calls its ``log`` and ``config.update`` (and, at close, ``summary`` and ``finish``): see
        the README's "Coming from TensorBoard, W&B or Lightning" for what to call on it."""
        return self.wandb_run

    def _drop(self, step: int, count: int) -> None:
        if not self.dropped_points:
            warnings.warn(
                f"autolog wandb sink: W&B history only moves forward; {count} value(s) at step "
                f"{step} (below step {self._step}, already logged) were not sent to W&B. They are "
                f"in the local store. Further drops are counted silently.",
                RuntimeWarning, stacklevel=2)
        self.dropped_points += count

    def close(self, result: RunResult) -> None:
        run = self.wandb_run
        if run is None:
            return
        try:
            if result.config:
                run.config.update(dict(result.config), allow_val_change=True)
            if result.summary:
                run.summary.update(dict(result.summary))
        finally:
            sync_file = getattr(run.settings, "sync_file", None)
            written = getattr(run.settings, "mode", None) != "disabled"
            run.finish(exit_code=EXIT_CODES.get(result.status, 1))
            self.wandb_run = None
        if sync_file and written and os.path.exists(sync_file):
            # run.finish() returns before wandb-core has written the log's last block
            from autolog.sinks.wandb_records import wait_for_exit_record

            if not wait_for_exit_record(sync_file, CLOSE_TIMEOUT):
                warnings.warn(f"autolog wandb sink: {sync_file} still incomplete after "
                              f"{CLOSE_TIMEOUT:.0f} s", RuntimeWarning, stacklevel=2)
