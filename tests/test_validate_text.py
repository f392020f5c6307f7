"""Text autolog takes from the process or the user (argv, cwd, config, metric names, texts,
exception messages, file names) is stored losslessly, or with `clean_text`'s explicit escape for
lone surrogates; it never raises and never costs another value, in any sink."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

from tensorboard.backend.event_processing import event_accumulator as ea

import autolog

CHILD = textwrap.dedent("""
    import os, sys
    import autolog

    @autolog.track(project="text", dir=sys.argv[1], sinks=["local", "csv", "tensorboard"], log_every=5)
    def train(data="x\\udcff", label="caf\\u00e9 \\u2615", other="x\\udcff"):
        run = autolog.current_run()
        for step in range(20):
            autolog.log({"loss": float(step)}, step=step)
            if step == 3:
                autolog.log({"bad\\ud800": 1.0}, step=step)
                autolog.log_text("note\\udce9", "text \\udcff and \\ud800", step=step)
            if step == 9:
                run.update_config({"f": "caf\\udce9.csv"})
        return {"score": 1.0}

    train(data=sys.argv[3])
    print("DONE", autolog.current_run() is None)
""")


def _csv_values(path: str, name: str) -> list[float]:
    """The values of `name` in the CSV sink's file, whether it is wide (a column per name) or
    long (step, wall_time, name, value rows)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and {"name", "value"} <= set(rows[0]):
        return [float(r["value"]) for r in rows if r["name"] == name]
    return [float(r[name]) for r in rows if r.get(name)]


def test_non_utf8_argv_cwd_config_names_and_texts_are_stored_everywhere(tmp_path):
    runs = tmp_path / "runs"
    cwd = os.path.join(os.fsencode(tmp_path), b"dir-\xff\xfe")  # a real non-UTF-8 directory
    os.mkdir(cwd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONIOENCODING": "utf-8"}
    argv = [os.fsencode(sys.executable), b"-c", CHILD.encode(), os.fsencode(runs), b"--data",
            b"/data/caf\xe9.csv"]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert b"DONE True" in proc.stdout

    (run,) = autolog.list_runs(str(runs))
    assert run.status == "finished"
    assert run.config["data"] == "/data/caf\\xe9.csv"  # argv[3] given to the function: escaped byte
    assert run.config["label"] == "café ☕"  # valid text: unchanged
    assert run.config["other"] == "x\\xff"  # a config value "x\udcff"
    assert run.config["f"] == "caf\\xe9.csv"
    assert run.meta["command"][-1] == "/data/caf\\xe9.csv"
    assert run.meta["cwd"].endswith("dir-\\xff\\xfe")
    assert run.metrics["loss"] == [(s, float(s)) for s in range(20)]  # steps 0-9 included
    assert run.metrics["bad\\ud800"] == [(3, 1.0)]
    (text,) = run.media
    assert text["name"] == "note\\xe9" and text["text"] == "text \\xff and \\ud800"
    with open(os.path.join(run.path, "run.json"), encoding="utf-8") as fh:  # valid UTF-8 JSON
        assert json.load(fh)["config"]["f"] == "caf\\xe9.csv"

    csv_path = os.path.join(run.path, "metrics.csv")
    assert _csv_values(csv_path, "loss") == [float(s) for s in range(20)]
    assert _csv_values(csv_path, "bad\\ud800") == [1.0]

    acc = ea.EventAccumulator(os.path.join(run.path, "tensorboard"), size_guidance=dict.fromkeys(
        ea.DEFAULT_SIZE_GUIDANCE, 0)).Reload()
    assert [e.step for e in acc.Scalars("loss")] == list(range(20))
    assert [e.value for e in acc.Scalars("bad\\ud800")] == [1.0]


def test_update_config_with_a_surrogate_loses_nothing(tmp_path):
    with autolog.run(sinks=["local", "csv"], dir=str(tmp_path), log_every=5) as run:
        for step in range(20):
            autolog.log({"loss": float(step)})
            if step == 9:
                run.update_config({"f": "caf\udce9.csv", "k\udcff": 1})
    back = autolog.read_run(run.path)
    assert back.status == "finished"
    assert back.config["f"] == "caf\\xe9.csv" and back.config["k\\xff"] == 1
    assert back.metrics["loss"] == [(s, float(s)) for s in range(20)]


def test_exception_message_with_surrogates_is_recorded(tmp_path):
    err = ValueError("bad file caf\udce9.csv")

    @autolog.track(sinks=["local"], dir=str(tmp_path))
    def train():
        autolog.log({"x": 1.0})
        raise err

    try:
        train()
    except ValueError as caught:
        assert caught is err
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == "failed"
    assert run.meta["exception_message"] == "bad file caf\\xe9.csv"
    assert "caf\\xe9.csv" in run.meta["traceback"]
    assert run.metrics["x"] == [(0, 1.0)]


def test_run_name_tags_and_a_non_utf8_dir_from_the_environment(tmp_path, monkeypatch):
    root = os.path.join(str(tmp_path), os.fsdecode(b"runs-\xe9"))  # a surrogateescape'd path
    monkeypatch.setenv("AUTOLOG_DIR", root)
    monkeypatch.setenv("AUTOLOG_PROJECT", "proj\udcff")
    with autolog.run(name="run\udcff", tags=["t\udce9"], sinks=["local", "csv", "tensorboard"]) as run:
        autolog.log({"a": 1.0})
    (back,) = autolog.list_runs(root)
    assert os.path.isdir(os.fsencode(root))
    assert back.status == "finished" and back.name == "run\\xff" and back.metrics["a"] == [(0, 1.0)]
    with open(os.path.join(back.path, "run.json"), encoding="utf-8") as fh:
        assert json.load(fh)["tags"] == ["t\\xe9"]


def test_a_sink_error_with_a_surrogate_is_recorded(tmp_path):
    from autolog.sinks.base import Sink

    class Broken(Sink):
        name = "broken"

        def write(self, batch):
            raise OSError("cannot write caf\udce9.csv")

    with autolog.run(sinks=["local", Broken()], dir=str(tmp_path)) as run:
        autolog.log({"a": 1.0})
    back = autolog.read_run(run.path)
    assert back.status == "finished" and back.metrics["a"] == [(0, 1.0)]
    assert "caf\\xe9.csv" in back.meta["sink_errors"]["broken"]["first_error"]
