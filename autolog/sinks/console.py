"""ConsoleSink: a live progress bar while the run goes, one summary block when it ends.

The bar (tqdm, imported lazily; `tqdm.auto` so notebooks get a widget) shows the step,
steps/s, the latest ``train/loss``, every scalar marked for the bar and the values logged for
the bar only (``autolog.log(..., logger=False)``: `Batch.bar`, not in the end summary). It is drawn on
``sys.stderr`` by default, and only when that stream is a terminal (or in a notebook): piped or
redirected output gets no bar and no per-step lines, just the summary at the end.

While a terminal bar is drawn, ``sys.stdout`` and ``sys.stderr`` (when they are terminals) are
replaced by thin proxies that clear the bar, write the user's complete lines and redraw the bar,
the way ``tqdm.write`` does, so user prints never land in the middle of the bar. A partial line
that the user flushes hides the bar until the line is finished. Both are restored at close.

Without tqdm the sink falls back to one plain line every `interval` seconds (terminals only).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Any, Iterable, TextIO

from autolog.core import process  # a leaf module: the one owner of process-wide state
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink

#: always on the bar
DEFAULT_KEYS = ("train/loss",)
#: a scalar whose name contains one of these is better when lower; every other one when higher
MINIMIZE = ("loss", "err")
#: per-parameter families listed last in the summary (after everything else)
PER_PARAMETER = ("grad_norm/", "weight_norm/", "update_ratio/", "gradients/", "parameters/")
#: diagnostics with no "better" direction: the summary shows their last value only
NO_BEST = PER_PARAMETER + ("optim/", "perf/")


def batch_prog_bar(batch: Batch) -> tuple[str, ...]:
    """Scalar names marked with ``autolog.log(..., prog_bar=True)``: ``Batch.prog_bar``."""
    return tuple(getattr(batch, "prog_bar", None) or ())


def lower_is_better(name: str) -> bool:
    """Whether the summary's "best" of `name` is its minimum (loss-like names) or maximum."""
    lowered = name.lower()
    return any(word in lowered for word in MINIMIZE)


def format_value(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}g}"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


class _Stat:
    """Last and best value of one scalar."""

    __slots__ = ("last_step", "last", "best", "minimize")

    def __init__(self, name: str) -> None:
        self.last_step = -math.inf
        self.last = math.nan
        self.best = math.nan
        self.minimize = lower_is_better(name)

    def add(self, step: int, value: float) -> None:
        if step >= self.last_step:
            self.last_step, self.last = step, value
        if value == value and (  # not NaN
                self.best != self.best
                or (value < self.best if self.minimize else value > self.best)):
            self.best = value


def update_stats(stats: dict[str, _Stat], points: Iterable[Any]) -> Any:
    """`_Stat.add` of every point in order (a new name gets a `_Stat`); the largest step, or
    None without points. Inlined: this loop is the console sink's whole cost per point."""
    get = stats.get
    top = None
    for name, point_step, value, _wall in points:
        stat = get(name)
        if stat is None:
            stat = stats[name] = _Stat(name)
        if point_step >= stat.last_step:
            stat.last_step = point_step
            stat.last = value
        if value == value:  # not NaN
            best = stat.best
            if best != best or (value < best if stat.minimize else value > best):
                stat.best = value
        if top is None or point_step > top:
            top = point_step
    return top


def summary_block(run: RunInfo | None, result: RunResult, stats: dict[str, _Stat],
                  first: Iterable[str] = (), max_keys: int = 20, steps: int | None = None) -> str:
    """The text printed at close: status, duration, run directory, last/best values."""
    duration = result.meta.get("duration")
    title = f"autolog: run {run.name!r}" if run is not None else "autolog: run"
    lines = [f"{title} {result.status} after {format_duration(duration)}"
             + (f" ({steps} steps)" if steps else "")]
    failure = _failure(result.meta)
    if failure:
        lines.append(f"  error      {failure}")
    if run is not None:
        lines.append(f"  directory  {run.path}")
    rows: list[tuple[str, str, str]] = []
    first = [k for k in dict.fromkeys(first) if k in stats]
    rest = sorted((k for k in stats if k not in first),
                  key=lambda k: (k.startswith(PER_PARAMETER) and k != "grad_norm/total", k))
    for key in first + rest:
        stat = stats[key]
        best = "" if key.startswith(NO_BEST) else f"{format_value(stat.best, 6)} ({'min' if stat.minimize else 'max'})"
        rows.append((key, format_value(stat.last, 6), best))
    for key, value in result.summary.items():  # e.g. the function's return values
        if key not in stats:
            rows.append((key, format_value(value, 6), ""))
    if rows:
        shown = rows[:max_keys]
        width = max(len("metric"), *(len(r[0]) for r in shown))
        lwidth = max(len("last"), *(len(r[1]) for r in shown))
        lines.append(f"  {'metric':<{width}}  {'last':>{lwidth}}  best")
        lines += [f"  {k:<{width}}  {last:>{lwidth}}  {best}".rstrip() for k, last, best in shown]
        if len(rows) > max_keys:
            lines.append(f"  ... and {len(rows) - max_keys} more")
    return "\n".join(lines) + "\n"


def _failure(meta: dict[str, Any]) -> str:
    kind, message = meta.get("exception_type"), meta.get("exception_message")
    if kind and message:
        return f"{kind}: {message}"
    return str(kind or message or "")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class ConsoleSink(Sink):
    """Live progress bar and an end-of-run summary.

    stream: where the bar and the summary go; ``None`` means ``sys.stderr`` at open.
    progress: ``None`` draws the bar only when `stream` is a terminal or in a notebook,
    ``True`` always, ``False`` never (the summary is printed in every case).
    keys: scalar names shown on the bar besides ``train/loss`` and the marked ones
    (default: the class attribute `keys`).
    max_summary_keys: how many scalars the summary lists (the bar's keys first).
    interval: seconds between plain progress lines when tqdm is not installed.
    """

    name = "console"
    syncable = False  # a live display: `autolog sync` has nothing to finish for it
    #: extra scalar names to show on the bar; subclass or pass ``keys=`` to change
    keys: tuple[str, ...] = ()

    def __init__(self, stream: TextIO | None = None, progress: bool | None = None, *,
                 keys: Iterable[str] | None = None, max_summary_keys: int = 20,
                 interval: float = 10.0) -> None:
        self.stream_arg = stream
        self.progress = progress
        self.shown: dict[str, None] = dict.fromkeys(DEFAULT_KEYS)
        self.shown.update(dict.fromkeys(self.keys if keys is None else keys))
        self.max_summary_keys = max_summary_keys
        self.interval = interval
        self.stats: dict[str, _Stat] = {}
        self.bar_only: dict[str, float] = {}  # the latest value of each logger=False name
        self.step = 0
        self.run: RunInfo | None = None
        self.stream: TextIO = sys.stderr
        self.mode: str | None = None  # "bar", "lines" or None (quiet)
        self._bar: Any = None
        self._proxies: dict[str, _BarSafeStream] = {}
        self._lock: Any = threading.RLock()
        self._line_t = self._line_step = 0.0
        self._refresh_t = -math.inf  # time.time() of the last redraw without a step
        self._start = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable before open: the stream, the bar and the lock are taken again at open."""
        state = dict(self.__dict__)
        state.update(stream=None, _bar=None, _proxies={}, _lock=None, mode=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self._lock = threading.RLock()

    # -- Sink -----------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        self.run = run
        self._start = time.monotonic()
        self.stream = self.stream_arg if self.stream_arg is not None else sys.stderr
        if self.progress is False:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        notebook = tqdm is not None and _is_notebook_tqdm(tqdm)
        if not (self.progress or notebook or _isatty(self.stream)):
            return
        if tqdm is None:
            self.mode = "lines"
            self._line_t = self._start
            return
        self.mode = "bar"
        self._bar = _holdable(tqdm)(desc=run.name or None, unit=" steps", file=self.stream,
                                    dynamic_ncols=True, leave=True, miniters=1)
        self._lock = self._bar.get_lock()
        if not notebook and _isatty(self.stream):
            for attr in ("stdout", "stderr"):
                current = getattr(sys, attr)
                if current is not None and _isatty(current):
                    self._proxies[attr] = _BarSafeStream(current, self._bar)
                    process.hooks.replace_stream(attr, self._proxies[attr])  # back by the run's end

    def write(self, batch: Batch) -> None:
        prog_bar = batch_prog_bar(batch)
        if prog_bar:
            self.shown.update(dict.fromkeys(prog_bar))
        step = batch.step
        top = update_stats(self.stats, batch.scalars)
        if top is not None and top > step:
            step = top
        for name, _point_step, value, _wall in getattr(batch, "bar", None) or ():
            self.bar_only[name] = value
        advance = max(step - self.step, 0)
        self.step = max(step, self.step)
        if self.mode == "bar":
            bar = self._bar
            with self._lock:
                # tqdm redraws at most every `mininterval` (its clock is time.time): the values
                # are formatted only for a hand-off that will be drawn
                now = time.time()
                due = now - max(getattr(bar, "last_print_t", 0.0), self._refresh_t) >= bar.mininterval
                if due:
                    bar.set_postfix(self._postfix(), refresh=False)
                if advance:
                    bar.update(advance)
                elif due:
                    self._refresh_t = now
                    bar.refresh()
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._line_t >= self.interval:
                rate = (self.step - self._line_step) / max(now - self._line_t, 1e-9)
                parts = [f"step {self.step}", f"{rate:.3g} steps/s"]
                parts += [f"{k}={v}" for k, v in self._postfix().items()]
                prefix = f"{self.run.name}: " if self.run and self.run.name else ""
                self.stream.write(prefix + " | ".join(parts) + "\n")
                self.stream.flush()
                self._line_t, self._line_step = now, self.step

    def close(self, result: RunResult) -> None:
        if self.mode == "bar":
            self._restore_stdio()
            with self._lock:
                self._bar.set_postfix(self._postfix(), refresh=False)
                if self._bar.held:  # the user's unfinished line: end it before the bar
                    self._bar.held = False
                    self.stream.write("\n")
            self._bar.close()
        if "duration" not in result.meta:
            meta = dict(result.meta, duration=time.monotonic() - self._start)
            result = RunResult(result.status, result.summary, meta, result.config)
        steps = result.meta.get("step", self.step)
        text = summary_block(self.run, result, self.stats, self.shown,
                             self.max_summary_keys, steps if isinstance(steps, int) else None)
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    # -- internals ------------------------------------------------------------------------

    def _postfix(self) -> dict[str, str]:
        shown = {k: format_value(self.stats[k].last) for k in self.shown if k in self.stats}
        shown.update((k, format_value(v)) for k, v in self.bar_only.items())
        return shown

    def _restore_stdio(self) -> None:
        for attr, proxy in self._proxies.items():
            proxy.flush()
            process.hooks.restore_stream(attr, proxy)  # unless someone else replaced it since
        self._proxies.clear()


def _is_notebook_tqdm(tqdm_cls: type) -> bool:
    notebook = sys.modules.get("tqdm.notebook")
    return notebook is not None and issubclass(tqdm_cls, notebook.tqdm_notebook)


_HOLDABLE: dict[type, type] = {}


def _holdable(base: type) -> type:
    """`base` whose drawing pauses while ``held`` (the user's unfinished line is on screen)."""
    if base not in _HOLDABLE:
        def display(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.held:
                return False
            return base.display(self, *args, **kwargs)

        _HOLDABLE[base] = type(f"Holdable{base.__name__}", (base,),
                               {"held": False, "display": display})
    return _HOLDABLE[base]


class _BarSafeStream:
    """Stands in for ``sys.stdout``/``sys.stderr`` while a terminal bar is drawn.

    Complete lines are written with the bar cleared, then the bar is redrawn; text without a
    newline waits for one (or for `flush`, which writes it and holds the bar back until the
    line ends). Everything else is delegated to the wrapped stream.
    """

    def __init__(self, wrapped: TextIO, bar: Any) -> None:
        self.wrapped = wrapped
        self._bar = bar
        self._pending = ""
        self._pid = os.getpid()

    def write(self, text: str) -> int:
        if not isinstance(text, str) or os.getpid() != self._pid:  # e.g. a forked worker
            return self.wrapped.write(text)
        with self._bar.get_lock():
            head, newline, tail = (self._pending + text).rpartition("\n")
            if newline:
                self._emit(head + newline)
                self._pending = tail
                self._bar.held = False
                self._bar.refresh(nolock=True)
            else:
                self._pending = tail
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if os.getpid() != self._pid:
            return self.wrapped.flush()
        with self._bar.get_lock():
            if self._pending:
                self._emit(self._pending)
                self._pending = ""
                self._bar.held = True
        self.wrapped.flush()

    def _emit(self, text: str) -> None:  # called with the bar's lock held
        if not self._bar.held:
            self._bar.clear(nolock=True)
        self.wrapped.write(text)
        self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)
