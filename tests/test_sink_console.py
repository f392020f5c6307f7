"""ConsoleSink: the summary block, quiet output off a terminal, the bar on a real pty."""
from __future__ import annotations

import fcntl
import io
import math
import os
import pty
import re
import struct
import sys
import termios
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import autolog
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import resolve_sink
from autolog.sinks.console import (ConsoleSink, batch_prog_bar, format_duration,
                                   lower_is_better)

INFO = RunInfo(id="20240101-000000-abcd", name="demo", project="proj",
               path="/runs/proj/20240101-000000-abcd", config={}, meta={})


def finished(**meta) -> RunResult:
    return RunResult("finished", {}, {"duration": 83.0, **meta}, {})


def losses(steps, start=0):
    return [("train/loss", s, 1.0 / (s + 1), float(s)) for s in range(start, start + steps)]


def summary_lines(text: str) -> list[str]:
    return text.splitlines()


class Pty:
    """A real terminal: the sink writes to the slave end, a thread drains the master end."""

    def __init__(self, columns: int = 120) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.stream = open(self.slave, "w", encoding="utf-8", closefd=False)
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the slave side is closed
                return
            if not data:
                return
            self.chunks.append(data)

    def output(self) -> str:
        """Everything written, once the slave is closed and the reader has seen EOF."""
        self.stream.close()
        os.close(self.slave)
        self._reader.join(timeout=10)
        os.close(self.master)
        return b"".join(self.chunks).decode("utf-8")


def screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: carriage returns overwrite, escape codes dropped."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw):
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return ["".join(line).rstrip() for line in lines]


def test_registered_by_name():
    sink = resolve_sink("console")
    assert isinstance(sink, ConsoleSink) and sink.name == "console"


def test_not_a_terminal_prints_only_the_summary():
    out = io.StringIO()
    sink = ConsoleSink(stream=out)
    sink.open(INFO)
    for start in range(0, 300, 50):
        sink.write(Batch(scalars=losses(50, start) + [("val/acc", start, start / 1000, 0.0)],
                         step=start + 50, prog_bar=("val/acc",)))
    assert out.getvalue() == ""  # no bar, no per-step lines
    sink.close(finished())
    text = out.getvalue()
    assert "\r" not in text and "steps/s" not in text
    lines = summary_lines(text)
    assert lines[0] == "autolog: run 'demo' finished after 1m 23s (300 steps)"
    assert lines[1] == "  directory  /runs/proj/20240101-000000-abcd"
    assert lines[2].split() == ["metric", "last", "best"]
    assert lines[3].split() == ["train/loss", "0.00333333", "0.00333333", "(min)"]
    assert lines[4].split() == ["val/acc", "0.25", "0.25", "(max)"]
    assert len(lines) == 5


def test_summary_best_last_cap_and_order():
    out = io.StringIO()
    sink = ConsoleSink(stream=out, keys=("val/acc",), max_summary_keys=5)
    sink.open(INFO)
    sink.write(Batch(scalars=[
        ("train/loss", 0, 2.0, 0.0), ("train/loss", 1, 0.5, 0.0), ("train/loss", 2, 1.0, 0.0),
        ("val/acc", 0, 0.8, 0.0), ("val/acc", 2, 0.6, 0.0), ("val/err", 2, math.nan, 0.0),
        ("val/err", 1, 0.3, 0.0), ("grad_norm/fc.weight", 2, 4.0, 0.0),
        ("grad_norm/total", 2, 5.0, 0.0), ("optim/lr", 2, 0.01, 0.0), ("zeta", 2, 1.0, 0.0),
    ], step=3))
    result = RunResult("failed", {"returned": 42.0}, {"duration": 3725.0,
                                                      "exception_type": "ValueError",
                                                      "exception_message": "boom"}, {})
    sink.close(result)
    lines = summary_lines(out.getvalue())
    assert lines[0] == "autolog: run 'demo' failed after 1h 02m 05s (3 steps)"
    assert lines[1] == "  error      ValueError: boom"
    table = {line.split()[0]: line.split()[1:] for line in lines[4:-1]}
    assert [line.split()[0] for line in lines[4:-1]] == [
        "train/loss", "val/acc", "grad_norm/total", "optim/lr", "val/err"]  # capped at 5
    assert table["train/loss"] == ["1", "0.5", "(min)"]  # last is the latest step
    assert table["val/acc"] == ["0.6", "0.8", "(max)"]
    assert table["val/err"] == ["nan", "0.3", "(min)"]  # NaN is last, never best
    assert lines[-1] == "  ... and 3 more"  # zeta, grad_norm/fc.weight, returned


def test_return_values_and_no_scalars():
    out = io.StringIO()
    sink = ConsoleSink(stream=out)
    sink.open(INFO)
    sink.close(RunResult("interrupted", {"acc": 0.5}, {"duration": 2.25}, {}))
    lines = summary_lines(out.getvalue())
    assert lines[0] == "autolog: run 'demo' interrupted after 2.2s"
    assert lines[3].split() == ["acc", "0.5"]


def test_progress_false_on_a_terminal_is_quiet():
    term = Pty()
    sink = ConsoleSink(stream=term.stream, progress=False)
    sink.open(INFO)
    sink.write(Batch(scalars=losses(5), step=5))
    sink.close(finished())
    text = term.output()
    assert "steps/s" not in text
    assert screen(text)[0].startswith("autolog: run 'demo' finished")


def test_bar_on_a_terminal_shows_step_rate_loss_and_marked_keys(monkeypatch):
    term = Pty()
    sink = ConsoleSink(stream=term.stream, keys=("optim/lr",))
    sink.open(INFO)
    assert sink.mode == "bar"
    for start in range(0, 200, 50):
        batch = Batch(scalars=losses(50, start) + [("val/acc", start, 0.5, 0.0),
                                                   ("optim/lr", start, 0.1, 0.0),
                                                   ("hidden", start, 9.0, 0.0)],
                      step=start + 50, prog_bar=("val/acc",) if start else ())
        sink.write(batch)
    sink.close(finished())
    lines = [line for line in screen(term.output()) if line]
    bar = lines[0]
    assert bar.startswith("demo: 200 steps [") and "steps/s" in bar
    assert "train/loss=0.005, optim/lr=0.1, val/acc=0.5]" in bar
    assert "hidden=" not in bar
    assert lines[1] == "autolog: run 'demo' finished after 1m 23s (200 steps)"


def test_user_prints_never_land_inside_the_bar(monkeypatch):
    term = Pty()
    monkeypatch.setattr(sys, "stdout", term.stream)  # the user's prints go to the same terminal
    sink = ConsoleSink(stream=term.stream)
    sink.open(INFO)
    assert sys.stdout is not term.stream  # wrapped while the bar is drawn
    sink.write(Batch(scalars=losses(10), step=10))
    print("epoch 1 done")
    sink.write(Batch(scalars=losses(10, 10), step=20))
    print("evaluating", end="", flush=True)  # an unfinished line: the bar must wait for it
    sink.write(Batch(scalars=losses(10, 20), step=30))
    print(" ok", "acc", 0.9)
    sink.write(Batch(scalars=losses(10, 30), step=40))
    print("still going", end="", flush=True)  # unfinished when the run ends
    sink.close(finished())
    assert sys.stdout is term.stream  # restored
    lines = [line for line in screen(term.output()) if line]
    assert lines[:3] == ["epoch 1 done", "evaluating ok acc 0.9", "still going"]
    assert lines[3].startswith("demo: 40 steps [") and lines[3].endswith("train/loss=0.025]")
    assert lines[4].startswith("autolog: run 'demo' finished")


def test_without_tqdm_a_plain_line_every_interval(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # failure injection: tqdm not installed
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = io.StringIO()
    sink = ConsoleSink(stream=out, progress=True, interval=0.0)
    sink.open(INFO)
    assert sink.mode == "lines"
    sink.write(Batch(scalars=losses(10), step=10))
    sink.write(Batch(scalars=losses(10, 10), step=20))
    sink.close(finished())
    lines = summary_lines(out.getvalue())
    assert re.fullmatch(r"demo: step 10 \| [0-9.e+]+ steps/s \| train/loss=0\.1", lines[0])
    assert lines[1].startswith("demo: step 20 | ") and lines[1].endswith("train/loss=0.05")
    assert lines[2].startswith("autolog: run 'demo' finished")

    quiet = io.StringIO()  # not a terminal and no tqdm: still quiet
    sink = ConsoleSink(stream=quiet, interval=0.0)
    sink.open(INFO)
    sink.write(Batch(scalars=losses(10), step=10))
    assert quiet.getvalue() == "" and sink.mode is None
    sink.close(finished())


def test_default_stream_is_stderr_at_open(capsys):
    sink = ConsoleSink()
    sink.open(INFO)
    sink.write(Batch(scalars=losses(3), step=3))
    sink.close(finished())
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("autolog: run 'demo' finished after 1m 23s (3 steps)")


def test_helpers():
    assert lower_is_better("train/loss") and lower_is_better("val/Error")
    assert not lower_is_better("val/acc") and not lower_is_better("optim/lr")
    assert format_duration(5.04) == "5.0s"
    assert format_duration(61) == "1m 01s"
    assert format_duration(7322) == "2h 02m 02s"
    assert format_duration(None) == "?"
    assert batch_prog_bar(Batch()) == ()
    assert batch_prog_bar(Batch(prog_bar=("a",))) == ("a",)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["train/loss", "val/acc", "val/err"]),
                          st.integers(-3, 5),
                          st.one_of(st.floats(), st.sampled_from([0.0, -0.0, float("nan")])),
                          st.just(0.0)), max_size=30),
       st.integers(0, 30))
def test_update_stats_is_stat_add_point_by_point(points, cut):
    from autolog.sinks.console import _Stat, update_stats

    def state(stats):
        return {k: (s.last_step, repr(s.last), repr(s.best)) for k, s in stats.items()}

    expected: dict = {}
    for name, step, value, _ in points:
        expected.setdefault(name, _Stat(name)).add(step, value)
    got: dict = {}
    tops = [update_stats(got, points[:cut]), update_stats(got, points[cut:])]  # two hand-offs
    assert state(got) == state(expected)
    assert tops == [max((p[1] for p in part), default=None) for part in (points[:cut], points[cut:])]


@pytest.mark.parametrize("progress", [None, True])
def test_duration_falls_back_to_the_sink_clock(progress):
    out = io.StringIO()
    sink = ConsoleSink(stream=out, progress=progress)
    sink.open(INFO)
    sink.close(RunResult("finished", {}, {}, {}))
    assert re.search(r"autolog: run 'demo' finished after \d+\.\ds\n", out.getvalue())


def test_a_run_prints_a_summary_matching_the_local_store(tmp_path):
    out = io.StringIO()
    with autolog.run(project="p", name="console-e2e", dir=str(tmp_path),
                     sinks=["local", ConsoleSink(stream=out)], log_every=4) as run:
        for step in range(10):
            autolog.log({"train/loss": 10.0 - step}, step=step)
            autolog.log({"val/acc": (step % 5) / 10}, step=step, prog_bar=True)
        path = run.path
    data = autolog.read_run(path)
    lines = summary_lines(out.getvalue())
    assert lines[0].startswith(f"autolog: run {data.name!r} finished after ")
    assert lines[1] == f"  directory  {path}"
    table = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert table["train/loss"] == ["1", "1", "(min)"]
    assert table["val/acc"] == ["0.4", "0.4", "(max)"]
    assert float(table["train/loss"][0]) == data.summary["train/loss"]
    assert float(table["val/acc"][0]) == data.summary["val/acc"]
    assert list(table)[:2] == ["train/loss", "val/acc"]  # marked keys come first
