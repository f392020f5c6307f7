"""Config capture never stops the tracked function: whatever it cannot describe becomes a short
description, its size is bounded, and the function runs with its arguments untouched."""
from __future__ import annotations

import copy
import dataclasses
import json
import os

import pytest

import autolog
from autolog.core import config as config_mod


class RaisesIn:
    def __init__(self, method):
        self.method = method

    def __repr__(self):
        if self.method == "__repr__":
            raise RuntimeError("no repr")
        return "RaisesIn()"

    def __len__(self):
        raise RuntimeError("no len")

    def __getattr__(self, name):
        if self.method == "__getattr__":
            raise RuntimeError(f"no {name}")
        raise AttributeError(name)


class BadLenDict(dict):
    def __len__(self):
        raise RuntimeError("no len")


@dataclasses.dataclass
class Cfg:
    lr: float = 0.1
    payload: object = None


def _recursive():
    items: list = [1, 2]
    items.append(items)
    return items


def _deep(n):
    root: dict = {}
    cur = root
    for _ in range(n):
        cur["a"] = {}
        cur = cur["a"]
    return root


ARGS = {
    "repr": RaisesIn("__repr__"),
    "getattr": RaisesIn("__getattr__"),
    "badlen": BadLenDict(a=1),
    "loop": _recursive(),
    "big": 10**5000,
    "deep": _deep(2000),
    "cfg": Cfg(payload=RaisesIn("__repr__")),
    "long": "x" * 10_000,
    "many": list(range(1000)),
    "wide": {f"k{i}": i for i in range(5000)},  # last: past 1000 keys the rest is left out
}


def test_every_odd_argument_is_described_and_the_body_runs_untouched(tmp_path):
    seen = {}
    snapshot = {k: v for k, v in ARGS.items() if k not in ("repr", "getattr", "cfg", "loop", "deep")}
    snapshot = copy.deepcopy(snapshot)

    @autolog.track(sinks=["local"], dir=str(tmp_path))
    def train(**kwargs):
        seen.update(kwargs)
        autolog.log({"ran": 1.0})
        return 1.0

    assert train(**ARGS) == 1.0
    assert all(seen[k] is v for k, v in ARGS.items())  # the very objects
    assert {k: seen[k] for k in snapshot} == snapshot  # and unchanged
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == "finished" and run.metrics["ran"] == [(0, 1.0)]
    c = run.config
    assert c["repr"] == "<unrepresentable: RuntimeError in __repr__>"
    assert c["getattr"] == "<unrepresentable: RuntimeError in __getattr__>"
    assert c["badlen"] == "<unrepresentable: RuntimeError in __len__>"
    assert (c["loop.0"], c["loop.1"], c["loop.2"]) == (1, 2, "<recursive>")
    assert c["big"] == "<int of 5001 digits>"
    deep_keys = [k for k in c if k.startswith("deep")]
    assert deep_keys == ["deep.a.a.a.a.a.a"]  # MAX_DEPTH = 6, the rest described
    assert c["cfg.lr"] == 0.1 and c["cfg.payload"] == "<unrepresentable: RuntimeError in __repr__>"
    assert c["long"] == "x" * config_mod.MAX_STR + "..."
    assert c["many"] == list(range(config_mod.MAX_ITEMS))
    assert len(c) <= config_mod.MAX_KEYS + 1 and config_mod.TRUNCATED_KEY in c
    with open(os.path.join(run.path, "run.json"), encoding="utf-8") as fh:
        assert json.load(fh)["config"] == c


@pytest.mark.parametrize("name", list(ARGS))
def test_each_odd_argument_alone(tmp_path, name):
    flat = config_mod.capture(lambda x: None, (ARGS[name],), {})
    json.dumps(flat)  # always storable
    assert flat


def test_the_limits_are_the_documented_ones():
    assert (config_mod.MAX_DEPTH, config_mod.MAX_ITEMS, config_mod.MAX_STR, config_mod.MAX_KEYS) == (6, 64, 500, 1000)
    flat = config_mod.flatten({"a": {f"k{i}": i for i in range(2000)}})
    assert len(flat) == config_mod.MAX_KEYS + 1
    assert flat[config_mod.TRUNCATED_KEY].startswith("more than 1000 config keys")


def test_config_keys_are_text(tmp_path):
    class Key:
        def __str__(self):
            raise RuntimeError("no str")

    flat = config_mod.flatten({Key(): 1, 2: "b", "k\udcff": "v\udcfe"})
    assert flat == {"<unprintable Key: RuntimeError in __str__>": 1, "2": "b", "k\\xff": "v\\xfe"}
