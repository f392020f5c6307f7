"""Fuzzing `log`, `log_text`, `log_image`, config capture, metric names and steps (hypothesis):
every call either records exactly what it was given or raises one of the documented errors, and
the run always finishes and reads back with every valid value intact.

The oracle below is written from the documented rules (README "Text", "Config", `autolog.log`),
not from autolog's code. Bounded well under a minute (derandomized: the same examples each run).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import autolog

STEP_MAX = 2**63 - 1


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if code >= 0xDC80 and code <= 0xDCFF else f"\\u{code:04x}"


def escaped(text: str) -> str:
    """The documented text rule: lone surrogates escaped, everything else unchanged."""
    return re.sub("[\ud800-\udfff]", _escape, text)


class Refused(Exception):
    def __init__(self, *types):
        self.types = set(types)


def expect_name(name):
    if not isinstance(name, str) or not name:
        raise Refused(TypeError)
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Refused(ValueError)
    return escaped(name)


def expect_step(step):
    if step is None:
        return 0  # no optimizer and only explicit steps in `log`: the run's step stays 0
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise Refused(TypeError)
    if isinstance(step, float) and (not math.isfinite(step) or not step.is_integer()):
        raise Refused(ValueError)
    if not 0 <= int(step) <= STEP_MAX:
        raise Refused(ValueError)
    return int(step)


def expect_value(value):
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise Refused(ValueError) from None
    if isinstance(value, float):
        return value
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise Refused(TypeError)
        if value.numel() != 1:
            raise Refused(ValueError)
        return float(value.reshape(()).to(torch.float64))
    raise Refused(TypeError)  # None, str, ...


def expect_image(image):
    arr = image.float().numpy() if isinstance(image, torch.Tensor) else image
    if arr.dtype.kind not in "biuf":
        raise Refused(TypeError)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise Refused(ValueError)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        raise Refused(ValueError)


def outcome(*checks):
    """The value of each check, or the set of errors the call may raise."""
    results, errors = [], set()
    for check, arg in checks:
        try:
            results.append(check(arg))
        except Refused as r:
            errors |= r.types
    return results, errors


CHARS = st.one_of(st.characters(codec="utf-8"), st.sampled_from(["\udcff", "\udc80", "\ud800", "\x00", "\n", "/", "é", "☕"]))


def texts(alphabet=CHARS, min_size=0, max_size=8):
    # lists joined, not st.text: st.text narrows such an alphabet to its valid-UTF-8 part
    return st.lists(alphabet, min_size=min_size, max_size=max_size).map("".join)


NAMES = st.one_of(texts(), st.sampled_from(["loss", "val/acc", "a/b/c"]), st.integers(0, 3))
STEPS = st.one_of(st.integers(-3, 2**64), st.sampled_from([0, 1, 2, STEP_MAX, STEP_MAX + 1, -1]),
                  st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([2.0, 2.5, True, "3"]))
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**400, 10**400), st.booleans(), st.none(),
    st.text(max_size=3),
    st.builds(lambda v, shape, dt: torch.full(shape, v, dtype=dt), st.floats(-1e4, 1e4, width=16),
              st.sampled_from([(), (1,), (2,), (1, 1)]),
              st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64])),
)
IMAGES = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.float32, np.float64, np.bool_, np.int16, np.complex64]),
               hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
    st.builds(lambda a: torch.from_numpy(a).to(torch.bfloat16),
              hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5),
                         elements=st.floats(0, 1, width=32))),
)
class RaisesInRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


CONFIG_LEAVES = st.one_of(st.builds(RaisesInRepr), st.none(), st.booleans(), st.integers(-10**5000, 10**5000) | st.integers(-99, 99),
                          st.floats(allow_nan=True), texts(max_size=20), st.text(max_size=600))
CONFIG = st.recursive(CONFIG_LEAVES, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(texts(st.sampled_from("abc0é\udcff"), 1, 3), inner, max_size=4),
                      max_leaves=12)

OPS = st.one_of(
    st.tuples(st.just("log"), st.dictionaries(NAMES, VALUES, min_size=1, max_size=3), STEPS),
    st.tuples(st.just("log_pair"), NAMES, VALUES, STEPS),
    st.tuples(st.just("text"), NAMES, texts(max_size=20), st.none() | STEPS),
    st.tuples(st.just("image"), NAMES, IMAGES, st.none() | STEPS),
    st.tuples(st.just("log_nested"), NAMES, NAMES, VALUES, STEPS),
    st.tuples(st.just("config"), st.dictionaries(st.sampled_from(["u0", "u1"]), CONFIG, min_size=1)),
)


def expected_config_leaf(value):
    if isinstance(value, RaisesInRepr):
        return "<unrepresentable: RuntimeError in __repr__>"
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 996 else f"<int of {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = escaped(value)
    return text if len(text) <= 500 else text[:500] + "..."


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=12), config=st.dictionaries(st.sampled_from(["c0", "c1", "c2"]), CONFIG))
def test_every_call_records_exactly_or_raises_the_documented_error(ops, config):
    root = tempfile.mkdtemp(dir=os.getcwd())
    metrics: dict[str, list] = {}
    media: list = []
    updates: dict = {}

    @autolog.track(project="fuzz", dir=root, sinks=["local"], log_every=3)
    def train(**kwargs):
        for op in ops:
            kind = op[0]
            if kind == "config":
                autolog.current_run().update_config(op[1])  # never raises
                updates.update(op[1])
                continue
            if kind == "log_nested":  # {outer: {inner: value}} is recorded as "outer/inner"
                results, errors = outcome((expect_name, op[1]), (expect_name, op[2]), (expect_value, op[3]),
                                          (expect_step, op[4]))
                if not errors:
                    results = [f"{results[0]}/{results[1]}", *results[2:]]
                call = lambda: autolog.log({op[1]: {op[2]: op[3]}}, step=op[4])  # noqa: E731
            elif kind in ("log", "log_pair"):
                items = list(op[1].items()) if kind == "log" else [(op[1], op[2])]
                checks = [c for k, v in items for c in ((expect_name, k), (expect_value, v))]
                results, errors = outcome(*checks, (expect_step, op[-1]))
                call = (lambda: autolog.log(op[1], step=op[-1])) if kind == "log" else \
                    (lambda: autolog.log(op[1], op[2], step=op[-1]))
            elif kind == "text":
                results, errors = outcome((expect_name, op[1]), (expect_step, op[3]))
                call = lambda: autolog.log_text(op[1], op[2], step=op[3])  # noqa: E731
            else:
                results, errors = outcome((expect_name, op[1]), (expect_image, op[2]), (expect_step, op[3]))
                call = lambda: autolog.log_image(op[1], op[2], step=op[3])  # noqa: E731
            try:
                call()
            except (TypeError, ValueError) as exc:
                assert errors, f"{op!r} refused but valid: {exc!r}"
                assert type(exc) in errors, f"{op!r}: {exc!r} is not one of {errors}"
                continue
            assert not errors, f"{op!r} accepted but expected {errors}"
            step = results[-1]
            if kind in ("log", "log_pair", "log_nested"):
                for name, value in zip(results[0:-1:2], results[1:-1:2]):
                    metrics.setdefault(name, []).append((step, value))
            elif kind == "text":
                media.append(("text", results[0], step, escaped(op[2])))
            else:
                media.append(("image", results[0], step, None))
        return 1.0

    assert train(**config) == 1.0
    (run,) = autolog.list_runs(root)
    assert run.status == "finished"

    def key(point):
        return (point[0], repr(point[1]))

    got = {n: sorted(v, key=key) for n, v in run.metrics.items()}
    want = {n: sorted(v, key=key) for n, v in metrics.items()}
    assert set(got) == set(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for (s1, v1), (s2, v2) in zip(got[name], want[name]):
            assert s1 == s2 and (v1 == v2 or (math.isnan(v1) and math.isnan(v2))), (name, s1, v1, v2)
    back = sorted((m["kind"], m["name"], m["step"], m.get("text") if m["kind"] == "text" else None)
                  for m in run.media)
    assert back == sorted(media)

    with open(os.path.join(run.path, "run.json"), encoding="utf-8") as fh:
        assert json.load(fh)["config"] == run.config  # valid UTF-8 JSON, whatever the input
    for name, value in [*config.items(), *updates.items()]:
        if not isinstance(value, (list, dict)):
            assert run.config[name] == expected_config_leaf(value), name
