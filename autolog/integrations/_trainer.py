"""What every trainer integration (Lightning, Hugging Face) shares: its options, opening the run
when training starts (joining an open one), ending it with the status an exception means, and
the one line that says where the run went."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from autolog import api
from autolog.core.run import Run, current, finish_for_exception
from autolog.core.resume import MARKER, read_marker  # noqa: F401 -- the integrations' names for them
from autolog.core.settings import DEFAULT_SINKS, ENV

WATCH = ("gradients", "parameters", "all", None)


def run_options(owner: str, watch: str | None, watch_options: Mapping[str, Any] | None,
                **options: Any) -> dict[str, Any]:
    """`autolog.run`'s options of a callback, with `watch` and `watch_options` checked (a clear
    error at the callback's construction, naming `owner`)."""
    if watch not in WATCH:
        raise ValueError(f"{owner}: watch: expected one of {WATCH}, got {watch!r}")
    if watch_options is not None and not isinstance(watch_options, Mapping):
        raise TypeError(f"{owner}: watch_options: expected a dict, got {type(watch_options).__name__}")
    if options.get("dir") is not None:
        options["dir"] = os.fspath(options["dir"])
    return options


def open_run(options: Mapping[str, Any], config: Mapping[str, Any], log_every: Any = None,
             progress_bar: bool = False, fallback: bool = False) -> tuple[Any, bool, bool]:
    """Open the run for a trainer's stage (or join the open one): ``(run, owned, records)``.
    fallback: when the run to resume (found in a checkpoint's marker) cannot be continued, say
    so and start a new one.

    log_every: the trainer's own logging interval, used when neither the option nor
    ``$AUTOLOG_LOG_EVERY`` says. progress_bar: the trainer shows one, so the console sink is left
    out of the default sinks (one live bar). records: this process writes the run (rank 0, not
    disabled)."""
    options = dict(options)
    options.pop("config", None)
    if options.get("log_every") is None and not os.environ.get(ENV["log_every"], "").strip() \
            and isinstance(log_every, int) and not isinstance(log_every, bool) and log_every > 0:
        options["log_every"] = log_every
    if options.get("sinks") is None and not os.environ.get(ENV["sinks"], "").strip() and progress_bar:
        options["sinks"] = tuple(name for name in DEFAULT_SINKS if name != "console")
    outer = current()
    try:
        api.run(config=config, **options)  # joins `outer` when there is one
    except (ValueError, RuntimeError, OSError) as exc:
        if not fallback or options.get("resume") is None:
            raise
        print(f"autolog: could not continue run {options['resume']} ({exc}); a new run starts", file=sys.stderr)
        options.update(resume=None, resume_step=None)
        api.run(config=config, **options)
    run = current()
    records = isinstance(run, Run) and getattr(run, "is_follower", False) is not True
    return run, outer is None, records


def end_run(owner: str, run: Any, owned: bool, exc: BaseException | None) -> None:
    """Finish the run a callback started (a joined run ends with its owner), with `exc`'s status;
    a Ctrl-C ends even a joined run ``interrupted`` (trainers turn it into an exit the owner would
    record as failed). Never raises: the user's exception (if any) must stay the story."""
    try:
        if owned:
            finish_for_exception(run, exc)
            say_where(run)
        elif isinstance(exc, KeyboardInterrupt):
            run.finish("interrupted", exc)
    except Exception as err:  # noqa: BLE001
        print(f"autolog: {owner} could not end the run: {type(err).__name__}: {err}", file=sys.stderr)


def say_where(run: Any) -> None:
    """When a callback's own run ends: one line on stderr saying where it went,
    ``autolog: run '<name>' <status>: <path>``, unless the console sink is on (its summary says
    it). Nothing on ranks other than 0, nothing when disabled."""
    if not isinstance(run, Run) or run.is_follower or _console_is_on(run):
        return
    print(f"autolog: run '{run.name}' {run.status}: {run.path}", file=sys.stderr)


def _console_is_on(run: Run) -> bool:
    from autolog.sinks.console import ConsoleSink

    return any(sink == "console" or isinstance(sink, ConsoleSink)
               or (isinstance(sink, type) and issubclass(sink, ConsoleSink)) for sink in run.settings.sinks)


def report_once(owner: str, run: Any, what: str, exc: BaseException, doing: str) -> None:
    """A callback's own failure (never the user's) while `doing` something: recorded in
    ``meta["capture_errors"][what]`` and told on stderr, once per run; training goes on."""
    meta = getattr(run, "meta", None)
    errors = meta.setdefault("capture_errors", {}) if isinstance(meta, dict) else {}
    if what in errors:
        return
    detail = f"{type(exc).__name__}: {exc}"
    errors[what] = detail
    print(f"autolog: {owner} could not {doing}; training goes on. {detail}", file=sys.stderr)




def write_marker(folder: str, run: Any, step: int, file: str | None = None) -> None:
    """``<folder>/autolog.json`` (or the file `file`): the run (id, project, directory), the
    trainer's step of the checkpoint and the run's log size when it was taken (call it after
    ``run.flush(wait="log")``), so a trainer resuming from the checkpoint continues the run there."""
    data = {"format": 1, "run_id": run.id, "project": run.project, "run_path": os.path.abspath(run.path),
            "step": int(step), "log_offset": getattr(run.pipeline, "log_end", None)}
    target = file or os.path.join(folder, MARKER)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)  # Lightning makes it with the checkpoint
    tmp = f"{target}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, target)


_MISSING = object()


def caller_local(name: str, function: str | None = None, accept: Any = None, depth: int = 12) -> Any:
    """Local `name` of the nearest frame above the caller that runs `function` (any, when None)
    and whose value `accept` takes (any, when None), or None. The trainers hand callbacks neither
    themselves, nor the checkpoint being restored or written, nor the project being started: their
    own frames hold them."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        if function is None or frame.f_code.co_name == function:
            value = frame.f_locals.get(name, _MISSING)
            if value is not _MISSING and (accept is None or accept(value)):
                return value
        frame = frame.f_back
    return None
