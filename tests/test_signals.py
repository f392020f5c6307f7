"""Signals are safe: a SIGINT or SIGTERM arriving at any point of a hand-off or of a run's end
loses nothing and leaves the run's true status on disk; process-wide handlers are installed
while runs are open and removed exactly after.

Every signal here is a real one, sent to a real child process. Where a test needs the signal at
one exact point, the child sends it to itself from that point; the random-point test lets a
timer thread send it whenever it fires, and asserts only what holds wherever it lands.
"""
import json
import os
import signal
import sys

import pytest

import autolog
from autolog.core import process
from tests.helpers import child

run_module = sys.modules["autolog.core.run"]


def _communicate(proc, timeout):
    """The child's output; a child still running at `timeout` is killed, not left behind."""
    try:
        return proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise

END_SCRIPT = """
    import os, signal, sys, autolog
    from autolog.sinks import Sink
    SIG, WHERE = signal.{sig}, {where!r}

    class SignalAtClose(Sink):
        name = "signal-at-close"
        def close(self, result):  # the end path, writer side (as mp.spawn's SIGTERM to a rank)
            os.kill(os.getpid(), SIG)

    sinks = ["local", SignalAtClose()] if WHERE == "sink_close" else ["local"]

    @autolog.track(project="end", sinks=sinks, log_every=7)
    def train():
        if WHERE == "end_hook":  # the end path, main thread: the first thing the end does
            autolog.current_run()._on_finish.insert(0, lambda run: os.kill(os.getpid(), SIG))
        for i in range(20):
            autolog.log("x", float(i), step=i)
        raise RuntimeError("boom")

    try:
        train()
    except KeyboardInterrupt as exc:
        print("KeyboardInterrupt after", type(exc.__context__).__name__, flush=True)
"""


@pytest.mark.parametrize("where", ["sink_close", "end_hook"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_run_end_waits_until_the_run_is_recorded(tmp_path, sig, where):
    proc = child(END_SCRIPT.format(sig=sig, where=where), str(tmp_path))
    out, err = _communicate(proc, 120)
    [run] = autolog.list_runs(project="end")
    assert run.status == "failed", err  # its own status: not `crashed` (run.json left `running`)
    assert run.meta["exception_message"] == "boom"
    assert run.metrics["x"] == [(i, float(i)) for i in range(20)]
    if sig == "SIGTERM":  # then the signal acts as without autolog: the process ends by it
        assert proc.returncode == -signal.SIGTERM, err
    else:  # Ctrl-C: KeyboardInterrupt raised once the run is recorded
        assert proc.returncode == 0 and "KeyboardInterrupt after RuntimeError" in out, err


STAGE_SCRIPT = """
    import os, signal, sys, autolog
    from autolog.pipeline import buffer
    SIG = signal.{sig}

    class SignalWhileStaging(buffer.Staged):
        sent = False
        def __init__(self, *args, **kwargs):  # the buffer is taken, not yet in the pipeline
            if not SignalWhileStaging.sent:
                SignalWhileStaging.sent = True
                os.kill(os.getpid(), SIG)
            super().__init__(*args, **kwargs)

    buffer.Staged = SignalWhileStaging

    @autolog.track(project="stage", sinks=["local"], log_every=10)
    def train():
        for i in range(11):  # no optimizer: each call is a step; the 11th (step 10) hands off
            autolog.log({{"x": float(i), "y": -float(i)}})
        print("not reached", flush=True)

    try:
        train()
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_a_handoff_is_staged_loses_nothing(tmp_path, sig):
    proc = child(STAGE_SCRIPT.format(sig=sig), str(tmp_path))
    out, err = _communicate(proc, 120)
    assert "not reached" not in out
    [run] = autolog.list_runs(project="stage")
    assert run.status == "interrupted", err
    assert run.metrics["x"] == [(i, float(i)) for i in range(10)], err
    assert run.metrics["y"] == [(i, -float(i)) for i in range(10)]
    if sig == "SIGTERM":
        assert proc.returncode == -signal.SIGTERM and run.meta["signal"] == "SIGTERM"
    else:
        assert proc.returncode == 0 and "KeyboardInterrupt" in out


TRIALS_SCRIPT = """
    import json, os, random, signal, sys, threading, autolog
    SIG, TRIALS, SEED = signal.{sig}, {trials}, {seed}
    NAMES = [f"m{{j}}" for j in range(1000)]
    rng = random.Random(SEED)
    progress = {{"done": 0, "signalled": None}}

    class Stop(Exception):
        pass

    def on_signal(signum, frame):
        # The user's handler: autolog ends the run first on SIGTERM; on SIGINT it hands on at once
        # and this raises KeyboardInterrupt, as Python's own handler does.
        if progress["signalled"] is None:
            progress["signalled"] = progress["done"]  # log calls returned before the signal acted
        raise KeyboardInterrupt if signum == signal.SIGINT else Stop

    signal.signal(SIG, on_signal)

    @autolog.track(project="trials", sinks=["local"], log_every=200, flush_secs=3600)
    def train(trial):
        timer = threading.Timer(rng.uniform(0.0, 0.6), os.kill, (os.getpid(), SIG))
        timer.start()  # fires at any point of the loop: mid-log, mid-staging, mid-submit
        i = 0
        while True:  # 1000 metrics a step, a hand-off of 200 steps x 1000 metrics every 200 steps
            if progress["signalled"] is not None:
                # the handler ran inside a callback whose exceptions Python ignores (a weakref
                # callback: "Exception ignored in ..."): stop here instead
                raise KeyboardInterrupt if SIG == signal.SIGINT else Stop
            autolog.log(dict.fromkeys(NAMES, float(i)))
            i += 1
            progress["done"] = i

    for trial in range(TRIALS):
        progress.update(done=0, signalled=None)
        try:
            train(trial)
        except (KeyboardInterrupt, Stop):
            pass
        run = autolog.list_runs(project="trials")[0]
        # SIGINT: the run stays open until KeyboardInterrupt leaves the function, so every call
        # that returned counts; SIGTERM: the run ends in the handler, so those before it acted
        done = progress["done"] if SIG == signal.SIGINT else progress["signalled"]
        print(json.dumps({{"path": run.path, "done": done}}), flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signals_at_random_points_of_heavy_handoffs_lose_nothing(tmp_path, sig):
    """10 trials per signal (20 in all): whatever point of the loop, of the hand-off or of its
    staging the signal hits, every step whose `log` call returned reads back, whole."""
    seed = int.from_bytes(os.urandom(4), "little")
    proc = child(TRIALS_SCRIPT.format(sig=sig, trials=10, seed=seed), str(tmp_path))
    out, err = _communicate(proc, 600)
    assert proc.returncode == 0, err
    trials = [json.loads(line) for line in out.splitlines()]
    assert len(trials) == 10
    for trial in trials:
        data = autolog.read_run(trial["path"])
        done = trial["done"]
        context = f"seed {seed}, {done} steps logged, {err[-2000:]}"
        assert data.status == "interrupted", context
        expected = [(s, float(s)) for s in range(done + 1)]
        for j in range(1000):
            series = data.metrics.get(f"m{j}", [])
            # every step whose call returned; the one the signal cut may be there or not
            assert series == expected[:done] or series == expected, (j, len(series), context)
        if sig == "SIGTERM":
            assert data.meta["signal"] == "SIGTERM"


def test_handlers_are_installed_while_a_run_is_open_and_removed_exactly_after(tmp_path):
    before = {s: signal.getsignal(s) for s in process.SIGNALS}
    before_hook, before_stdout = sys.excepthook, sys.stdout
    replacement = object()
    with autolog.run(sinks=["local"]):
        assert all(signal.getsignal(s) == process.hooks._on_signal for s in process.SIGNALS)
        assert sys.excepthook == process.hooks._excepthook
        process.hooks.replace_stream("stdout", replacement)  # a sink that never put it back
        assert sys.stdout is replacement
        with autolog.run(sinks=["local"]):  # a nested run joins: still installed
            pass
        assert sys.excepthook == process.hooks._excepthook
    assert {s: signal.getsignal(s) for s in process.SIGNALS} == before
    assert sys.excepthook is before_hook and sys.stdout is before_stdout
    assert not process.hooks.installed


def test_a_handler_installed_during_the_run_is_left_in_place(tmp_path):
    def users_handler(signum, frame):
        pass

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with autolog.run(sinks=["local"]):
            signal.signal(signal.SIGTERM, users_handler)
        assert signal.getsignal(signal.SIGTERM) is users_handler  # theirs stays
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deferred_signals_hold_a_real_signal_and_deliver_it_at_the_end():
    got = []
    old_int = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: got.append(("handler", signum)))
        with process.deferred_signals():
            with process.deferred_signals():  # reentrant: only the outermost delivers
                os.kill(os.getpid(), signal.SIGINT)
                sum(range(10))  # a call: where Python would run the handler at the latest
                got.append("inner end")
            got.append("outer end")
        assert got == ["inner end", "outer end", ("handler", signal.SIGINT)]
        assert signal.getsignal(signal.SIGINT) is not process.hooks._on_signal  # put back
    finally:
        signal.signal(signal.SIGINT, old_int)


def test_deferred_signals_raise_keyboard_interrupt_at_the_end_of_the_block():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with process.deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("block ran to its end")
    assert steps == ["block ran to its end"]
