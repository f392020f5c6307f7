"""The per-step capture path records what it recorded before its rewrite.

Each program of `reference_programs` (tiny seeded CPU training loops: SGD+momentum with
``watch(log="all")``, a GAN's two optimizers, LBFGS and SGD closures, gradient accumulation,
schedulers and param_group edits, several param groups, GradScaler with a skipped step,
``clip_grad_norm_``, a stepless run, Adam with ``log="gradients"``/``"parameters"``, user
`autolog.log` values, NaN/Inf injections) is run against the code of today and compared with
``tests/data/reference_series.json``, which ``tests/make_reference_series.py`` wrote from the
code of commit 5de25b3 (see that script to regenerate; do not regenerate it to make a
failure here go away -- a difference is a change in what runs record).

Per program, the test asserts:

- the set of scalar series names (timing series included) is the same;
- every series but the timing ones (``perf/*``) has the same steps, in order, and the same
  values -- exactly (NaN where there was NaN), except the tolerances below;
- the timing series have the same steps (their values depend on the clock);
- histograms: the same names and, per point, the same step, bin edges and counts, exactly;
- ``meta["nonfinite"]`` (first non-finite step, parameter, whether the loss) and
  ``meta["optimizers"]`` (index, type, steps, param groups, name, skipped steps) are equal;
- the run finished.

Tolerances (relative 1e-6, nowhere else): values that are legitimately sensitive to the order
of a summation, whose last bits a correct rewrite may change by reducing in another order or
grouping:

- the watched norms ``grad_norm/*``, ``weight_norm/*`` and the ratios of norms
  ``update_ratio/*``: L2 norms autolog computes itself (``torch._foreach_norm`` per tensor, the
  total as the norm of the norms); fusing or splitting those reductions reorders the sums.
  ``train/grad_norm`` is not one of them: it is the value ``clip_grad_norm_`` returned, which
  torch computes, and must stay exact;
- ``train/loss`` where a step sums several ``backward()`` scalars (the GAN's D: real + fake;
  gradient accumulation: 4 micro-batches): a sum of floats depends on its order;
- an ``on_epoch`` mean (``user/mean_out_epoch``): a mean of the epoch's values.

Everything else -- single-backward losses, learning rates and other hyperparameters, user
values, steps, histogram edges and counts, the NaN/Inf findings -- must match exactly.
"""
from __future__ import annotations

import json
import math
import os

import pytest

import reference_programs as rp

GOLDEN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reference_series.json")

with open(GOLDEN_PATH) as _f:
    GOLDEN = json.load(_f)["programs"]

REL = 1e-6
_NORM_PREFIXES = ("grad_norm/", "weight_norm/", "update_ratio/")
# (program, series) summed over several backward calls or values: order-of-summation sensitive
_SUMMED = {
    ("gan_two_optimizers", "train/loss"),
    ("grad_accumulation", "train/loss"),
    ("user_logs", "user/mean_out_epoch"),
}


def _tolerance(program: str, name: str) -> float:
    if name.startswith(_NORM_PREFIXES) or (program, name) in _SUMMED:
        return REL
    return 0.0


def _same(a: float, b: float, rel: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    if rel == 0.0 or math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _compare(program: str, want: dict, got: dict) -> list[str]:
    """Every difference, as readable lines (empty: identical)."""
    diffs: list[str] = []
    if got["status"] != want["status"]:
        diffs.append(f"status: {got['status']!r}, golden {want['status']!r}")
    missing = sorted(set(want["names"]) - set(got["names"]))
    extra = sorted(set(got["names"]) - set(want["names"]))
    if missing:
        diffs.append(f"series missing: {missing}")
    if extra:
        diffs.append(f"series not in the golden: {extra}")

    for name, want_points in want["series"].items():
        got_points = got["series"].get(name)
        if got_points is None:
            continue  # reported as missing
        want_steps = [s for s, _ in want_points]
        got_steps = [s for s, _ in got_points]
        if got_steps != want_steps:
            diffs.append(f"{name}: steps {got_steps}, golden {want_steps}")
            continue
        rel = _tolerance(program, name)
        bad = [(s, g, w) for (s, w), (_, g) in zip(want_points, got_points) if not _same(g, w, rel)]
        if bad:
            shown = ", ".join(f"step {s}: {g!r} != {w!r}" for s, g, w in bad[:4])
            diffs.append(f"{name}: {len(bad)} of {len(want_points)} values differ"
                         f"{' beyond rel %g' % rel if rel else ''} ({shown}{', ...' if len(bad) > 4 else ''})")

    for name, want_steps in want["timing_steps"].items():
        got_steps = got["timing_steps"].get(name)
        if got_steps is not None and got_steps != want_steps:
            diffs.append(f"{name} (timing): steps {got_steps}, golden {want_steps}")

    if sorted(got["histograms"]) != sorted(want["histograms"]):
        diffs.append(f"histogram names: {sorted(got['histograms'])}, golden {sorted(want['histograms'])}")
    for name, want_hist in want["histograms"].items():
        got_hist = got["histograms"].get(name)
        if got_hist is None:
            continue
        got_steps, want_steps = [h[0] for h in got_hist], [h[0] for h in want_hist]
        if got_steps != want_steps:
            diffs.append(f"histogram {name}: steps {got_steps}, golden {want_steps}")
            continue
        for (step, want_edges, want_counts), (_, got_edges, got_counts) in zip(want_hist, got_hist):
            exact = [0.0] * len(want_edges)
            if len(got_edges) != len(want_edges) or not all(map(_same, got_edges, want_edges, exact)):
                diffs.append(f"histogram {name} step {step}: edges differ")
            if got_counts != want_counts:
                diffs.append(f"histogram {name} step {step}: counts {got_counts}, golden {want_counts}")

    if got["nonfinite"] != want["nonfinite"]:
        diffs.append(f"meta['nonfinite']: {got['nonfinite']}, golden {want['nonfinite']}")
    if got["optimizers"] != want["optimizers"]:
        diffs.append(f"meta['optimizers']: {got['optimizers']}, golden {want['optimizers']}")
    return diffs


def test_every_program_has_a_golden():
    assert sorted(rp.PROGRAMS) == sorted(GOLDEN)


@pytest.mark.parametrize("program", sorted(rp.PROGRAMS))
def test_program_records_what_it_recorded_before(program, tmp_path):
    path = rp.PROGRAMS[program](str(tmp_path / "runs"))
    got = rp.summarize(path)
    diffs = _compare(program, GOLDEN[program], got)
    assert not diffs, f"{program}: {len(diffs)} differences from the golden:\n  " + "\n  ".join(diffs[:40])


def test_nonfinite_goldens_name_the_injected_fault():
    """The goldens of the NaN/Inf programs hold the finding each injection should produce (a
    check of the goldens themselves: the comparison above is only as good as they are)."""
    assert GOLDEN["nan_grad_param"]["nonfinite"] == {"step": 6, "parameter": "2.weight", "loss": False}
    assert GOLDEN["nan_loss"]["nonfinite"]["step"] == 5 and GOLDEN["nan_loss"]["nonfinite"]["loss"] is True
    assert GOLDEN["inf_input"]["nonfinite"]["step"] == 7
    assert GOLDEN["grad_scaler_skip"]["optimizers"][0].get("skipped_steps") == 1
