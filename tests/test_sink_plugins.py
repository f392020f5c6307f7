"""Sink plug-ins through the entry-point group ``autolog.sinks``, and the registry's errors.

The test package in tests/plugin_pkg is installed for real (pip, no network, no build
isolation) into a temporary directory that the tests put on sys.path, so importlib.metadata
discovers its entry point exactly as it would in a user's environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import autolog
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import (ENTRY_POINT_GROUP, Sink, available_sinks, resolve_sink,
                           resolve_sinks, sink_class)

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg"
PLUGIN_MODULE = "autolog_recording_sink"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """tests/plugin_pkg installed with pip into a fresh directory (built from a copy, so the
    source tree gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "build",
                                                                     "*.egg-info"))
    site = root / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore",
               PIP_NO_INPUT="1")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                   check=True, env=env, cwd=root, capture_output=True)
    return site


@pytest.fixture
def plugin(plugin_site, monkeypatch):
    """The plug-in package importable and discoverable for one test."""
    monkeypatch.syspath_prepend(str(plugin_site))
    yield sys.modules.get(PLUGIN_MODULE) or __import__(PLUGIN_MODULE)
    sys.modules.pop(PLUGIN_MODULE, None)


def test_available_sinks_lists_builtins_then_the_plugin(plugin):
    names = available_sinks()
    assert names[:5] == ["local", "tensorboard", "wandb", "csv", "console"]
    assert "recording" in names[5:]


def test_plugin_absent_when_not_installed():
    assert "recording" not in available_sinks()
    with pytest.raises(ValueError, match="unknown sink 'recording'"):
        resolve_sink("recording")


def test_resolve_by_name_gives_an_instance_of_the_plugin_class(plugin, tmp_path):
    sink = resolve_sink("recording")
    assert isinstance(sink, Sink) and type(sink) is plugin.RecordingSink
    assert sink_class("recording") is plugin.RecordingSink
    assert [type(s).__name__ for s in resolve_sinks(["csv", " recording "])] == [
        "CSVSink", "RecordingSink"]

    info = RunInfo(id="r", name="r", project="p", path=str(tmp_path), config={"lr": 0.1},
                   meta={})
    sink.open(info)
    sink.write(Batch(scalars=[("train/loss", 0, 0.5, 1.0)]))
    sink.close(RunResult("finished", {"train/loss": 0.5}, {}, {}))
    events = plugin.read_recording(str(tmp_path))
    assert [e["event"] for e in events] == ["open", "write", "close"]
    assert events[0]["config"] == {"lr": 0.1}
    assert events[1]["scalars"] == [["train/loss", 0, 0.5, 1.0]]


def test_unknown_name_lists_the_available_ones(plugin):
    with pytest.raises(ValueError) as info:
        resolve_sink("tensorbord")
    message = str(info.value)
    assert "unknown sink 'tensorbord'; did you mean tensorboard?" in message
    for name in ("local", "tensorboard", "wandb", "csv", "console", "recording"):
        assert name in message


def test_entry_point_that_is_not_a_sink(tmp_path, monkeypatch):
    # The smallest honest registration: a dist-info directory on sys.path.
    dist = tmp_path / "not_a_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbogus = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "bogus" in available_sinks()
    with pytest.raises(TypeError, match="subclass of autolog.sinks.Sink"):
        resolve_sink("bogus")


@pytest.mark.parametrize("name, backend, module", [
    ("tensorboard", "tensorboard", "autolog.sinks.tensorboard"),
    ("wandb", "wandb", "autolog.sinks.wandb"),
])
def test_missing_extra_names_the_extra(name, backend, module, monkeypatch):
    monkeypatch.setitem(sys.modules, backend, None)  # failure injection: "not installed"
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError) as info:
        resolve_sink(name)
    assert f"pip install 'autolog[{name}]'" in str(info.value)
    assert info.value.name == backend


@pytest.mark.parametrize("from_env", [False, True])
def test_a_run_uses_the_plugin_by_name(plugin, tmp_path, monkeypatch, from_env):
    sinks = None if from_env else ["local", "recording"]
    if from_env:
        monkeypatch.setenv("AUTOLOG_SINKS", "local,recording")
    with autolog.run(project="plug", dir=str(tmp_path), sinks=sinks,
                     config={"lr": 0.01}, log_every=2) as run:
        for step in range(5):
            autolog.log({"train/loss": 1.0 / (step + 1)}, step=step)
        path = run.path
    events = plugin.read_recording(path)
    assert events[0]["event"] == "open" and events[0]["config"]["lr"] == 0.01
    assert events[-1] == {"event": "close", "status": "finished",
                          "summary": events[-1]["summary"]}
    recorded = [(s, v) for e in events if e["event"] == "write"
                for n, s, v, _w in e["scalars"] if n == "train/loss"]
    assert recorded == autolog.read_run(path).metrics["train/loss"]
