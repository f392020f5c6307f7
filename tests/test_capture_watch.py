"""autolog.watch: norms, update ratios and histograms compared with independent computations."""
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autolog
from capture_util import batches, open_run, read, series, tiny

NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _train_and_observe(model, opt, data, every, call=None):
    """Trains; returns hand-computed grad norms, weight norms and update ratios per step."""
    grads, weights, ratios = {}, {}, {}
    run = autolog.current_run()
    for x, y in data:
        step = run.step
        opt.zero_grad()
        F.mse_loss((call or model)(x), y).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if step % every == 0:
            grads[step] = {n: float(torch.linalg.vector_norm(p.grad)) for n, p in model.named_parameters()}
            weights[step] = {n: float(torch.linalg.vector_norm(w)) for n, w in before.items()}
        opt.step()
        if step % every == 0:
            ratios[step] = {n: float(torch.linalg.vector_norm(p.detach() - before[n])
                                     / torch.linalg.vector_norm(before[n])) for n, p in model.named_parameters()}
    return grads, weights, ratios


def _check(data, prefix, expected, names=NAMES, total=False):
    for name in names:
        got = series(data, f"{prefix}/{name}")
        assert got.keys() == expected.keys(), name
        for step in expected:
            assert got[step] == pytest.approx(expected[step][name], rel=1e-5, abs=1e-12), (name, step)
    if total:
        got = series(data, f"{prefix}/total")
        for step, norms in expected.items():
            value = float(np.sqrt(sum(v * v for v in norms.values())))
            assert got[step] == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("run_every,watch_every,every", [(1, None, 1), (3, None, 3), (50, 2, 2)])
def test_all_statistics_match_independent_computation(tmp_path, run_every, watch_every, every):
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with open_run(tmp_path, log_every=run_every) as run:
        autolog.watch(model, log="all", log_every=watch_every)
        grads, weights, ratios = _train_and_observe(model, opt, batches(7), every)
    data = read(run)
    assert sorted(grads) == list(range(0, 7, every))
    _check(data, "grad_norm", grads, total=True)
    _check(data, "weight_norm", weights)
    _check(data, "update_ratio", ratios)
    for kind in ("gradients", "parameters"):
        assert sorted(data.histograms) == sorted(f"{k}/{n}" for k in ("gradients", "parameters") for n in NAMES)
        assert [s for s, _e, _c in data.histograms[f"{kind}/0.weight"]] == sorted(grads)


def test_histograms_match_numpy(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y), = batches(1, size=32)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, log="all")
        F.mse_loss(model(x), y).backward()
        grad = model[0].weight.grad.detach().numpy().ravel().astype(np.float64).copy()
        weight = model[0].weight.detach().numpy().ravel().astype(np.float64).copy()
        opt.step()
    data = read(run)
    for name, values in (("gradients/0.weight", grad), ("parameters/0.weight", weight)):
        [(step, edges, counts)] = data.histograms[name]
        assert step == 0 and len(edges) == 65 and len(counts) == 64
        assert edges[0] == pytest.approx(values.min()) and edges[-1] == pytest.approx(values.max())
        reference, _ = np.histogram(values, bins=64, range=(values.min(), values.max()))
        assert sum(counts) == values.size
        assert np.abs(np.asarray(counts) - reference).sum() <= 2  # at most a value on a bin edge


def test_watch_twice_does_not_double_hooks(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model)
        autolog.watch(model, log="all")
        assert len(model._forward_pre_hooks) == 1
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    data = read(run)
    assert sorted(series(data, "grad_norm/0.weight")) == [0, 1, 2]
    assert "weight_norm/0.weight" in data.metrics  # the second call's options apply
    assert len(model._forward_pre_hooks) == 0  # removed when the run ended


def test_unwatch_removes_hooks_and_frees_the_model(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(4)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model)
        for x, y in data[:2]:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        autolog.unwatch(model)
        assert len(model._forward_pre_hooks) == 0
        for x, y in data[2:]:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None
    assert sorted(series(read(run), "grad_norm/0.weight")) == [0, 1]


@pytest.mark.parametrize("add_group", [False, True])
def test_frozen_then_unfrozen_layer_is_covered(tmp_path, add_group):
    model = tiny()
    for p in model[0].parameters():
        p.requires_grad_(False)
    if add_group:  # the optimizer first holds the trainable parameters only
        opt = torch.optim.SGD(model[2].parameters(), lr=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {}
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, log="all")
        for i, (x, y) in enumerate(batches(6)):
            if i == 3:
                for p in model[0].parameters():
                    p.requires_grad_(True)
                if add_group:
                    opt.add_param_group({"params": list(model[0].parameters())})
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            if i >= 3:
                expected[i] = float(torch.linalg.vector_norm(model[0].weight.grad))
            opt.step()
    data = read(run)
    assert sorted(series(data, "grad_norm/2.weight")) == list(range(6))
    assert series(data, "grad_norm/0.weight") == pytest.approx(expected, rel=1e-5)
    assert sorted(series(data, "weight_norm/0.weight")) == [3, 4, 5]
    assert [s for s, _e, _c in data.histograms["gradients/0.weight"]] == [3, 4, 5]


@pytest.mark.parametrize("watched", ["compiled", "inner"])
def test_torch_compile_model(tmp_path, watched):
    model = tiny()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(compiled if watched == "compiled" else model, log="all")
        grads, weights, ratios = _train_and_observe(model, opt, batches(3), 1, call=compiled)
    data = read(run)
    assert not any("_orig_mod" in name for name in data.metrics)
    _check(data, "grad_norm", grads, total=True)
    _check(data, "update_ratio", ratios)
    assert sorted(series(data, "train/loss")) == [0, 1, 2]
    if watched == "compiled":
        # hooks on the compiled wrapper run eagerly; hooks added to the inner module after it
        # was first compiled are not seen by dynamo (it does not guard on hooks by default)
        assert sorted(series(data, "perf/samples_per_sec")) == [1, 2]


def test_data_parallel_wrapper_names(tmp_path):
    model = tiny()
    wrapped = nn.DataParallel(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(wrapped)
        grads, _w, _r = _train_and_observe(model, opt, batches(2), 1, call=wrapped)
    data = read(run)
    assert not any("module." in name for name in data.metrics)
    _check(data, "grad_norm", grads)


def test_watch_before_the_run_attaches_to_the_next_run(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    autolog.watch(model, name="net")
    runs = []
    for _ in range(2):
        with open_run(tmp_path, log_every=1) as run:
            for x, y in batches(2):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
        runs.append(read(run))
    assert sorted(series(runs[0], "grad_norm/net/0.weight")) == [0, 1]
    assert "grad_norm/net/total" in runs[0].metrics
    assert not any(n.startswith("grad_norm") for n in runs[1].metrics)  # only the next run
    assert len(model._forward_pre_hooks) == 0


def test_graph_is_sent_once(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, log=None, graph=True)
        for x, y in batches(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    data = read(run)
    graphs = [m for m in data.media if m["kind"] == "graph"]
    assert len(graphs) == 1 and graphs[0]["name"] == "model" and "Linear" in graphs[0]["text"]
    assert not any(n.startswith(("grad_norm", "weight_norm")) for n in data.metrics)


def test_watch_arguments_are_checked():
    with pytest.raises(TypeError):
        autolog.watch("model")
    with pytest.raises(ValueError, match="log"):
        autolog.watch(tiny(), log="weights")
    with pytest.raises(ValueError, match="on_nan"):
        autolog.watch(tiny(), on_nan="stop")
    with pytest.raises(ValueError, match="log_every"):
        autolog.watch(tiny(), log_every=0)
    autolog.unwatch()  # nothing watched: a no-op


def test_disabled_run_ignores_watch(tmp_path):
    model = tiny()
    with autolog.run(dir=str(tmp_path), mode="disabled"):
        autolog.watch(model)
        assert len(model._forward_pre_hooks) == 0


def test_closure_step_uses_the_gradients_of_its_closure(tmp_path):
    """optimizer.step(closure) (LBFGS, Lightning): the backward runs inside the step."""
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms, losses = {}, {}
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model)
        for i, (x, y) in enumerate(batches(3)):
            def closure():
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                norms[i] = float(torch.linalg.vector_norm(model[0].weight.grad))
                losses[i] = float(loss.detach())
                return loss

            opt.step(closure)
        assert run.step == 3
    data = read(run)
    assert series(data, "grad_norm/0.weight") == pytest.approx(norms, rel=1e-5)
    assert series(data, "train/loss") == losses


def test_a_model_compiled_after_it_was_watched_runs_the_hook_eagerly(tmp_path):
    """torch.compile traces the watched model's forward hook: the hook then calls its eager
    twin (a graph break), so the samples are still counted and nothing is traced away."""
    torch.compiler.reset()  # dynamo does not guard on hooks: no graph of another test's model
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=1) as run:
        autolog.watch(model, log="gradients")
        compiled = torch.compile(model, backend="eager")
        grads, _weights, _ratios = _train_and_observe(model, opt, batches(4), 1, call=compiled)
    data = read(run)
    assert sorted(series(data, "perf/samples_per_sec")) == [1, 2, 3]
    _check(data, "grad_norm", grads, total=True)
