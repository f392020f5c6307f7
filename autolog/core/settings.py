"""Where a run's settings come from: keyword arguments, then environment, then built-ins."""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Iterable, Mapping

from autolog.core.validate import clean_text, step as checked_step
from autolog.core.options import parse_capture

DEFAULT_DIR = "runs"
DEFAULT_SINKS = ("local", "console")
DEFAULT_LOG_EVERY = 50
DEFAULT_FLUSH_SECS = 5.0
DEFAULT_CLOSE_TIMEOUT = 30.0
DEFAULT_MAX_PENDING_MB = 256.0  # hand-offs waiting for the log; past it training waits
MODES = ("online", "offline", "disabled")

ENV = {
    "dir": "AUTOLOG_DIR",
    "project": "AUTOLOG_PROJECT",
    "sinks": "AUTOLOG_SINKS",
    "mode": "AUTOLOG_MODE",
    "log_every": "AUTOLOG_LOG_EVERY",
    "flush_secs": "AUTOLOG_FLUSH_SECS",
    "max_pending_mb": "AUTOLOG_MAX_PENDING_MB",
}

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(value: str, what: str) -> str:
    """`value` made into one path component that cannot escape its parent directory."""
    text = _SAFE.sub("_", str(value)).strip("._") or what
    return text[:100]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved settings of one run."""

    project: str
    name: str | None
    dir: str
    sinks: tuple[Any, ...]
    log_every: int
    flush_secs: float
    close_timeout: float
    config: Mapping[str, Any] | None
    tags: tuple[str, ...]
    capture: frozenset[str]  # automatic capture names, see autolog.core.options
    redact: tuple[Any, ...]
    mode: str
    sync_dist: bool = False
    max_pending_mb: float = DEFAULT_MAX_PENDING_MB
    resume: str | None = None  # a run reference (id, id prefix, name, directory) or "last"
    resume_step: int | None = None  # the step the resumed run continues at

    @property
    def disabled(self) -> bool:
        return self.mode == "disabled"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _positive_float(name: str, value: Any, what: str = "a positive number of seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def _from_env(key: str, convert=str) -> Any:
    raw = os.environ.get(ENV[key])
    if raw is None or raw.strip() == "":
        return None
    try:
        return convert(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {ENV[key]}={raw!r} is not valid") from None


def default_project(func: Any = None) -> str:
    """The function's name, else the script's name, else "autolog"."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        stem = os.path.splitext(os.path.basename(main))[0]
        if stem and stem not in ("__main__", "pytest", "ipykernel_launcher"):
            return stem
    if func is not None and getattr(func, "__name__", None):
        return func.__name__
    return "autolog"


def resolve(project: str | None = None, name: str | None = None, dir: str | os.PathLike | None = None,
            sinks: Iterable[Any] | str | None = None, log_every: int | None = None,
            config: Mapping[str, Any] | None = None, tags: Iterable[str] = (),
            capture: Any = None, redact: Iterable[Any] | None = None,
            mode: str | None = None, flush_secs: float | None = None,
            close_timeout: float | None = None, sync_dist: bool = False, func: Any = None,
            max_pending_mb: float | None = None, resume: str | os.PathLike | None = None,
            resume_step: int | None = None) -> Settings:
    """Settings for a run: each from its argument, else its environment variable, else built-in."""
    mode = mode or _from_env("mode") or "online"
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if sinks is None:
        env = _from_env("sinks")
        sinks = tuple(s.strip() for s in env.split(",") if s.strip()) if env else DEFAULT_SINKS
    elif isinstance(sinks, str):
        sinks = tuple(s.strip() for s in sinks.split(",") if s.strip())
    else:
        sinks = tuple(sinks)
    if log_every is None:
        log_every = _from_env("log_every", int) or DEFAULT_LOG_EVERY
    if flush_secs is None:
        flush_secs = _from_env("flush_secs", float) or DEFAULT_FLUSH_SECS
    if close_timeout is None:
        close_timeout = DEFAULT_CLOSE_TIMEOUT
    if max_pending_mb is None:
        max_pending_mb = _from_env("max_pending_mb", float) or DEFAULT_MAX_PENDING_MB
    if config is not None and not isinstance(config, Mapping) and not dataclasses.is_dataclass(config) \
            and not hasattr(config, "__dict__"):
        raise TypeError(f"config: expected a mapping, dataclass or namespace, got {type(config).__name__}")
    if isinstance(tags, str):
        tags = (tags,)
    tags = tuple(tags or ())
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"tags: expected strings, got {tag!r}")
    if isinstance(redact, (str, bytes)) or hasattr(redact, "pattern"):
        redact = (redact,)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {type(name).__name__}")
    resume, resume_step = _resume(resume, resume_step)
    project = project or _from_env("project") or default_project(func)
    if not isinstance(project, str):
        raise TypeError(f"project: expected a string, got {type(project).__name__}")
    return Settings(
        project=safe_component(project, "project"),
        name=None if name is None else clean_text(name),
        dir=os.fspath(dir or _from_env("dir") or DEFAULT_DIR),
        sinks=sinks,
        log_every=_positive_int("log_every", log_every),
        flush_secs=_positive_float("flush_secs", flush_secs),
        close_timeout=_positive_float("close_timeout", close_timeout),
        config=config,
        tags=tuple(clean_text(t) for t in tags),
        capture=parse_capture(capture),
        redact=tuple(redact or ()),
        mode=mode,
        sync_dist=bool(sync_dist),
        max_pending_mb=_positive_float("max_pending_mb", max_pending_mb, "a positive number of MB"),
        resume=resume,
        resume_step=resume_step,
    )


def _resume(resume: Any, resume_step: Any) -> tuple[str | None, int | None]:
    """`resume` as a run reference string (a path as given), `resume_step` as a checked step."""
    if resume is not None:
        if isinstance(resume, os.PathLike):
            resume = os.fspath(resume)
        if not isinstance(resume, str):
            raise TypeError(f"resume: expected a run id, id prefix, name, directory or \"last\", "
                            f"got {type(resume).__name__}")
        if not resume.strip():
            raise ValueError("resume: expected a run id, id prefix, name, directory or \"last\", got ''")
    if resume_step is not None:
        if resume is None:
            raise ValueError("resume_step: only with resume= (the run to continue at that step)")
        resume_step = checked_step(resume_step, "resume_step")
    return resume, resume_step
