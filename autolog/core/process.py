"""Process-wide state: one object installs it while runs are open and removes it exactly after.

While at least one run is open, `ProcessHooks` holds
- handlers for SIGTERM and SIGINT. SIGTERM ends the open runs as ``interrupted``, then does what it
  would have done without autolog (the previous handler, or the default: the process ends by
  SIGTERM). SIGINT goes to the previous handler (Python's: ``KeyboardInterrupt``, which ends the
  runs through the exception path); when that is the default action (the process would die with no
  Python code run) the open runs are ended first, as for SIGTERM. An ignored signal stays ignored.
- ``sys.excepthook``: an uncaught exception ends the open runs as ``failed``, then the previous
  hook prints it (once);
- an ``atexit`` handler: runs still open at interpreter exit end as ``finished``;
- the ``sys.stdout``/``sys.stderr`` replacements sinks make (`replace_stream`), put back at the
  latest when the last run ends;
- a fork handler (registered when the first run opens: ``os`` cannot unregister one, so outside
  runs it does nothing): a forked child's copies of the runs become inert and the child gets the
  handlers back that were there before autolog.
When the last run ends, each handler is put back unless someone replaced ours since (theirs stays).
Importing autolog changes none of this.

`deferred_signals()` holds SIGINT and SIGTERM during a section that must not be cut in two (a
run's end, a hand-off being staged) and delivers them when the section ends.

This module imports nothing from autolog: the run tells it what to do through `Callbacks`.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import signal
import sys
import threading
from typing import Any, Callable

try:  # the C function: `signal.getsignal` converts to an enum and costs ~15 us (a hand-off asks)
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover - not CPython
    _getsignal = signal.getsignal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IGNORED = (signal.SIG_IGN, None)  # left alone: an ignored signal, or a handler not set from Python


@dataclasses.dataclass
class Callbacks:
    """What the handlers do to the open runs (given by `autolog.core.run`)."""

    end_for_signal: Callable[[int], None]  # end every open run as interrupted by this signal
    end_for_exception: Callable[[BaseException], None]  # an uncaught exception: end them failed
    end_at_exit: Callable[[], None]  # interpreter exit: end the runs still open
    after_fork_in_child: Callable[[], None]  # make the child's copies of the runs inert


def _nothing(*_args: Any) -> None:
    return None


class ProcessHooks:
    """The one owner of autolog's process-wide handlers (see the module docstring)."""

    def __init__(self) -> None:
        self.callbacks = Callbacks(_nothing, _nothing, _nothing, _nothing)
        self.open_runs = 0
        self._lock = threading.RLock()
        self._previous_signals: dict[int, Any] = {}  # handlers ours replaced, while installed
        self._chain: dict[int, Any] = {}  # what ours hands on to (kept after removal, for callers)
        self._previous_excepthook: Any = None
        self._in_excepthook = False
        self._atexit = False
        self._fork_registered = False
        self._streams: list[tuple[str, Any, Any]] = []  # (attr, replacement, what it replaced)
        # deferral (main thread only: Python runs signal handlers on the main thread alone)
        self._depth = 0
        self._pending: list[int] = []
        self._temporary: dict[int, Any] = {}  # handlers swapped out for one deferred section
        self._remove_after_deferral = False
        self._handler = self._on_signal  # one bound method, so that `is` tells ours apart

    # ------------------------------------------------------------------ open / close
    def bind(self, callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def acquire(self) -> None:
        """A run opened: install everything when it is the first."""
        with self._lock:
            self.open_runs += 1
            if self.open_runs == 1:
                self._install()

    def release(self) -> None:
        """A run ended: remove everything after the last one (after the current deferred
        section, if one is open, so that a signal arriving now still waits for its end)."""
        with self._lock:
            self.open_runs = max(self.open_runs - 1, 0)
            if self.open_runs:
                return
            if self._depth:
                self._remove_after_deferral = True
                self._remove(signals=False)
            else:
                self._remove()

    def _install(self) -> None:
        if not self._fork_registered:
            os.register_at_fork(after_in_child=self._after_fork_in_child)
            self._fork_registered = True
        self._remove_after_deferral = False
        if _on_main_thread() and not self._previous_signals:
            for signum in SIGNALS:
                try:
                    previous = signal.getsignal(signum)
                    if previous in _IGNORED or previous is self._handler:
                        continue  # ignored stays ignored; a handler not set from Python is kept
                    signal.signal(signum, self._handler)
                except (ValueError, OSError):  # not the main interpreter, or no signals here
                    continue
                self._previous_signals[signum] = self._chain[signum] = previous
        if self._previous_excepthook is None:
            self._previous_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
        if not self._atexit:
            atexit.register(self._at_exit)
            self._atexit = True

    def _remove(self, signals: bool = True) -> None:
        if signals:
            self._remove_after_deferral = False
            self._put_back(self._previous_signals)
        if self._previous_excepthook is not None:
            if sys.excepthook == self._excepthook:  # else someone wrapped ours: it stays
                sys.excepthook = self._previous_excepthook
            self._previous_excepthook = None
        if self._atexit:
            atexit.unregister(self._at_exit)
            self._atexit = False
        for attr, replacement, replaced in reversed(self._streams):
            if getattr(sys, attr, None) is replacement:
                setattr(sys, attr, replaced)
        self._streams.clear()

    def _put_back(self, handlers: dict[int, Any]) -> None:
        """Restore each signal's handler in `handlers` where ours is still in place, and forget them."""
        for signum, previous in handlers.items():
            try:
                if _getsignal(signum) is self._handler:
                    signal.signal(signum, previous)
            except (ValueError, OSError):
                pass
        handlers.clear()

    @property
    def installed(self) -> bool:
        return self._atexit

    # ------------------------------------------------------------------ streams
    def replace_stream(self, attr: str, replacement: Any) -> None:
        """Put `replacement` in ``sys.<attr>`` ("stdout" or "stderr") until `restore_stream`,
        or at the latest until the last run ends."""
        with self._lock:
            self._streams.append((attr, replacement, getattr(sys, attr)))
            setattr(sys, attr, replacement)

    def restore_stream(self, attr: str, replacement: Any) -> None:
        """Undo `replace_stream` (unless someone replaced it since: theirs stays)."""
        with self._lock:
            for entry in self._streams:
                if entry[0] == attr and entry[1] is replacement:
                    self._streams.remove(entry)
                    if getattr(sys, attr, None) is replacement:
                        setattr(sys, attr, entry[2])
                    return

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._depth:
            if signum not in self._pending:
                self._pending.append(signum)
            return
        self._act(signum, frame)

    def _act(self, signum: int, frame: Any) -> None:
        previous = self._chain.get(signum, signal.SIG_DFL)
        fatal = not callable(previous) and previous != signal.SIG_IGN
        if signum == signal.SIGTERM or fatal:
            self.callbacks.end_for_signal(signum)
        _deliver(signum, previous, frame)

    def enter_deferral(self) -> bool:
        """Start holding SIGINT/SIGTERM; False (nothing held) off the main thread."""
        if not _on_main_thread():
            return False
        self._depth += 1
        if self._depth == 1:
            for signum in SIGNALS:  # someone replaced ours, or no run is open: ours for now
                current = _getsignal(signum)
                if current is not self._handler and current not in _IGNORED:
                    try:
                        signal.signal(signum, self._handler)
                    except (ValueError, OSError):
                        continue
                    self._temporary[signum] = current
        return True

    def exit_deferral(self) -> None:
        """End a section: the outermost one delivers what arrived meanwhile, in order, to the
        handler in place now (the signal then acts exactly as if it arrived at this point)."""
        self._depth -= 1
        if self._depth:
            return
        if self._temporary:
            self._put_back(self._temporary)
        if self._remove_after_deferral and not self.open_runs:
            with self._lock:
                self._remove()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        frame = sys._getframe(1)
        for signum in pending:
            current = _getsignal(signum)
            if current is self._handler:
                self._act(signum, frame)
            else:
                _deliver(signum, current, frame)

    # ------------------------------------------------------------------ excepthook, exit, fork
    def _excepthook(self, exc_type: Any, exc: BaseException, tb: Any) -> None:
        previous = self._previous_excepthook or sys.__excepthook__
        if self._in_excepthook:  # a hook that wrapped an earlier one of ours calls us back
            return sys.__excepthook__(exc_type, exc, tb)
        self._in_excepthook = True
        try:
            self.callbacks.end_for_exception(exc)
            previous(exc_type, exc, tb)
        finally:
            self._in_excepthook = False

    def _at_exit(self) -> None:
        self.callbacks.end_at_exit()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._pending = []
        self._temporary = {}
        self.callbacks.after_fork_in_child()
        if self.open_runs:  # the child's runs are inert: nothing of autolog's stays installed
            self.open_runs = 0
            self._remove()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _deliver(signum: int, handler: Any, frame: Any) -> None:
    """Let `handler` (a signal disposition) act on `signum` now."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_IGN:
        return
    else:  # the default action (or a handler not set from Python): raise it for real
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        os.kill(os.getpid(), signum)


hooks = ProcessHooks()


class deferred_signals:
    """``with deferred_signals(): ...``: SIGINT and SIGTERM arriving inside are held and
    delivered when the outermost such block ends, so the block is never cut in two (a Ctrl-C
    becomes a ``KeyboardInterrupt`` raised at its end). Reentrant; a no-op off the main thread,
    where Python never runs signal handlers anyway. ``@deferred_signals()`` on a function holds
    them for each of its calls."""

    __slots__ = ("_entered",)

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def held(*args: Any, **kwargs: Any) -> Any:
            if not hooks.enter_deferral():
                return func(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            finally:
                hooks.exit_deferral()

        return held

    def __enter__(self) -> "deferred_signals":
        self._entered = hooks.enter_deferral()
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self._entered:
            hooks.exit_deferral()
        return False
