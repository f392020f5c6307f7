"""autolog.log_histogram: the user's own tensors, arrays and lists as histograms, read back from
the local store, TensorBoard's EventAccumulator and a W&B offline run."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea

import autolog
from autolog.sinks.wandb import WandbSink
from autolog.sinks.wandb_records import read_wandb_run


def _expected(values, bins: int) -> tuple[list[float], list[float]]:
    """Edges and counts the way autolog bins: `bins` equal bins over the finite range."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    counts, edges = np.histogram(x, bins=bins, range=(x.min(), x.max()))
    return edges.tolist(), counts.astype(float).tolist()


def _accumulator(logdir: str) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(logdir, size_guidance=dict.fromkeys(ea.DEFAULT_SIZE_GUIDANCE, 0))
    acc.Reload()
    return acc


def test_tensor_array_and_list_reach_store_tensorboard_and_wandb(tmp_path):
    torch.manual_seed(0)
    activations = torch.randn(500, 8) * 3 + 1
    embeddings = np.random.default_rng(1).uniform(-2, 5, size=(40, 16))
    scores = [0.5, 1.5, 1.5, 2.5, 10.0]
    with autolog.run(project="h", dir=str(tmp_path), sinks=["local", "tensorboard", WandbSink(mode="offline")],
                     capture=False) as run:
        autolog.log_histogram("act/fc1", activations)  # step: the run's step, 0
        autolog.log_histogram("emb", embeddings, step=3, bins=16)
        autolog.log_histogram("scores", scores, step=5, bins=4)
        autolog.log("x", 1.0, step=5)  # W&B writes a row per step: a scalar beside the last one
    data = autolog.read_run(run.path)
    expected = {"act/fc1": (0, _expected(activations.numpy(), 64)),
                "emb": (3, _expected(embeddings, 16)), "scores": (5, _expected(scores, 4))}
    assert set(data.histograms) == set(expected)
    for name, (step, (edges, counts)) in expected.items():
        [(got_step, got_edges, got_counts)] = data.histograms[name]
        assert got_step == step
        assert got_edges == pytest.approx(edges, rel=1e-6, abs=1e-6)
        assert got_counts == counts, name  # exact: the same values in the same bins
    assert sum(data.histograms["act/fc1"][0][2]) == activations.numel()

    acc = _accumulator(os.path.join(run.path, "tensorboard"))
    assert set(expected) <= set(acc.Tags()["histograms"])  # HISTOGRAMS (and DISTRIBUTIONS)
    for name, (step, (edges, counts)) in expected.items():
        [event] = acc.Histograms(name)
        h = event.histogram_value
        assert event.step == step
        assert list(h.bucket) == counts
        assert list(h.bucket_limit) == pytest.approx(edges[1:], rel=1e-6)
        assert (h.min, h.num) == (pytest.approx(edges[0], rel=1e-6), sum(counts))
    assert {tag for tag in acc.Tags()["distributions"]} >= set(expected)

    records = read_wandb_run(run.path)
    for name, (step, (edges, counts)) in expected.items():
        [hist] = [r[name] for r in records.history if r["_step"] == step and name in r]
        assert hist["_type"] == "histogram"
        assert hist["bins"] == pytest.approx(edges, rel=1e-6) and hist["values"] == counts


def test_device_tensor_is_binned_at_the_call_and_kept_on_its_device(tmp_path):
    """Binning happens at the call: changing the tensor afterwards (an optimizer step on a
    weight) changes nothing recorded; the tensor itself is neither copied nor moved."""
    weight = torch.nn.Parameter(torch.arange(10, dtype=torch.float32))
    with autolog.run(project="h", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        autolog.log_histogram("w", weight, bins=10)
        with torch.no_grad():
            weight.mul_(100)  # after the call: not what was recorded
        assert weight.device.type == "cpu" and weight.requires_grad
    [(step, edges, counts)] = autolog.read_run(run.path).histograms["w"]
    assert (step, edges[0], edges[-1]) == (0, 0.0, 9.0)
    assert counts == [1.0] * 10


def test_non_finite_values_are_left_out_and_integers_and_bools_are_numbers(tmp_path):
    values = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 3.0, -float("inf")])
    with autolog.run(project="h", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        autolog.log_histogram("f", values, bins=2)
        autolog.log_histogram("i", torch.tensor([1, 1, 2, 7]), bins=3)
        autolog.log_histogram("b", np.array([True, False, True]), bins=2)
        autolog.log_histogram("nested", [[1, 2], [3, 4]], bins=2)
        autolog.log_histogram("none", [float("nan")], bins=2)  # nothing finite: empty bins
    h = autolog.read_run(run.path).histograms
    assert (h["f"][0][1], h["f"][0][2]) == ([1.0, 2.0, 3.0], [1.0, 2.0])
    assert (h["i"][0][1][0], h["i"][0][1][-1], h["i"][0][2]) == (1.0, 7.0, [3.0, 0.0, 1.0])
    assert h["b"][0][2] == [1.0, 2.0]
    assert h["nested"][0][2] == [2.0, 2.0]
    assert h["none"][0][2] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="", values=[1.0]), TypeError, "non-empty str"),
    (dict(name="h", values="abc"), TypeError, "expected a tensor, a numpy array or a list"),
    (dict(name="h", values=3.0), TypeError, "expected a tensor"),
    (dict(name="h", values=[]), ValueError, "at least one value"),
    (dict(name="h", values=torch.empty(0, 3)), ValueError, "at least one value"),
    (dict(name="h", values=[1, "a"]), TypeError, "real numbers"),
    (dict(name="h", values=[[1, 2], [3]]), TypeError, "rectangular"),
    (dict(name="h", values=torch.zeros(3, dtype=torch.complex64)), TypeError, "real-valued"),
    (dict(name="h", values=torch.zeros(3, device="meta")), TypeError, "meta"),
    (dict(name="h", values=torch.zeros(3).to_sparse()), TypeError, "dense"),
    (dict(name="h", values=[1.0], bins=0), ValueError, "bins"),
    (dict(name="h", values=[1.0], bins=513), ValueError, "bins"),
    (dict(name="h", values=[1.0], bins=2.5), TypeError, "bins"),
    (dict(name="h", values=[1.0], bins=True), TypeError, "bins"),
    (dict(name="h", values=[1.0], step=-1), ValueError, "step"),
])
def test_bad_input_raises_at_the_call_and_costs_nothing_else(tmp_path, kwargs, error, match):
    with autolog.run(project="h", dir=str(tmp_path), sinks=["local"], capture=False) as run:
        with pytest.raises(error, match=match):
            autolog.log_histogram(**kwargs)
        autolog.log_histogram("ok", [1.0, 2.0], bins=2)
    assert set(autolog.read_run(run.path).histograms) == {"ok"}


def test_outside_a_run_and_disabled_are_silent(tmp_path, monkeypatch):
    from autolog import api

    monkeypatch.setattr(api, "_warned_no_run", False)
    with pytest.warns(UserWarning, match="outside a run"):
        autolog.log_histogram("h", [1.0])
    with autolog.run(project="h", dir=str(tmp_path), mode="disabled"):
        autolog.log_histogram("h", [1.0])
    assert not os.path.exists(tmp_path / "h")
