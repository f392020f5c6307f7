"""The per-step path: one row per optimizer step, hyperparameters read again only when they
change, the NaN/Inf check one fused norm per step, and the capture's narrow port to the run."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import autolog
from autolog.capture.errors import NonFiniteWarning
from autolog.core.port import RunPort
from autolog.core.run import NullRun
from autolog.pipeline.records import SAME
from capture_util import batches, open_run, read, series, tiny


def _train(model, opt, data, sched=None):
    for x, y in data:
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_one_row_per_step_with_hyperparameters_only_when_they_change(tmp_path):
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    with open_run(tmp_path, log_every=1000) as run:  # no hand-off: the rows are all pending
        _train(model, opt, batches(7), sched)
        rows = list(run.buffer.rows)
        assert [r[1] for r in rows] == list(range(7))  # one row per step, at its step
        assert not run.buffer.scalars  # nothing else per step
        recorded = [r[5] is not SAME for r in rows]
        # the first step, then each step whose lr the scheduler changed (after steps 2 and 5)
        assert recorded == [True, False, False, True, False, False, True]
        assert all(isinstance(r[3], torch.Tensor) and r[3].device.type == "cpu" for r in rows)
    data = read(run)
    # read back, every step has every hyperparameter, as if each had been recorded
    assert series(data, "optim/lr") == {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.05, 4: 0.05, 5: 0.05, 6: 0.025}
    assert series(data, "optim/beta2") == {i: 0.999 for i in range(7)}
    assert sorted(series(data, "perf/step_time")) == list(range(1, 7))


def test_every_hand_off_records_the_hyperparameters_again(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(tmp_path, log_every=3) as run:
        _train(model, opt, batches(4))
        assert run.buffer.rows[0][1] == 3 and run.buffer.rows[0][5] is not SAME  # first of a batch
        opt.param_groups[0]["momentum"] = 0.5  # edited in place between steps
        _train(model, opt, batches(2))
    data = read(run)
    assert series(data, "optim/momentum") == {0: 0.9, 1: 0.9, 2: 0.9, 3: 0.9, 4: 0.5, 5: 0.5}
    assert series(data, "optim/lr") == {i: 0.1 for i in range(6)}


def test_a_tensor_learning_rate_changed_in_place_is_read_every_step(tmp_path):
    model = tiny()
    lr = torch.tensor(0.1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with open_run(tmp_path, log_every=1000) as run:
        for i, (x, y) in enumerate(batches(3)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            lr.mul_(0.5)  # the same tensor object, a new value
    assert series(read(run), "optim/lr") == pytest.approx({0: 0.1, 1: 0.05, 2: 0.025})  # float32


def _ops(fn):
    with torch.autograd.profiler.profile() as prof:
        fn()
    names = [e.name for e in prof.function_events]
    return {name: names.count(name) for name in set(names)}


def test_the_nan_check_is_one_fused_norm_per_step(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = batches(6)
    with open_run(tmp_path, log_every=1000):
        autolog.watch(model, log=None)  # the NaN/Inf alarm only
        _train(model, opt, data[:2])  # the first steps build the plan
        watched = _ops(lambda: _train(model, opt, data[2:]))
    plain = _ops(lambda: _train(model, opt, data[2:]))
    extra = {k: v - plain.get(k, 0) for k, v in watched.items() if v != plain.get(k, 0)}
    # four steps: one _foreach_norm each (its norms are stacked at the hand-off); nothing stacked,
    # folded, compared or read back per step
    assert extra.get("aten::_foreach_norm") == 4
    for name in ("aten::stack", "aten::isfinite", "aten::where", "aten::item", "aten::_local_scalar_dense",
                 "aten::copy_"):
        assert name not in extra, extra


@pytest.mark.parametrize("bad_step", [0, 4, 9])
def test_the_first_bad_step_and_parameter_survive_the_fold(tmp_path, bad_step):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0 keeps the weights finite
    with pytest.warns(NonFiniteWarning, match=f"step {bad_step}"), open_run(tmp_path, log_every=5) as run:
        autolog.watch(model, log=None)
        for i, (x, y) in enumerate(batches(12)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            if i >= bad_step:
                model[2].bias.grad[0] = float("nan")  # bad from this step on
            if i >= bad_step + 1:
                model[0].weight.grad[0, 0] = float("inf")  # an earlier parameter, one step later
            opt.step()
    assert read(run).meta["nonfinite"] == {"step": bad_step, "parameter": "2.bias", "loss": False}


PORT = [name for name, _ in inspect.getmembers(RunPort) if not name.startswith("_")] + list(
    RunPort.__annotations__)


def test_the_null_run_implements_the_port_without_getattr():
    assert "__getattr__" not in vars(NullRun)
    assert {"advance_step", "on_finish", "buffer", "capture", "step"} <= set(PORT)
    with autolog.run(mode="disabled") as run:
        assert isinstance(run, NullRun) and run.capture is None
        missing = [name for name in PORT if not hasattr(run, name)]
        assert not missing
        run.advance_step()
        run.on_finish(lambda r: None)
        autolog.log("x", 1.0)
        with pytest.raises(AttributeError):
            run.no_such_thing  # noqa: B018 -- a typo is an error, not a silent no-op


def test_columns_encode_to_the_same_record_as_their_points():
    import numpy as np

    from autolog.pipeline.records import ScalarColumns
    from autolog.store import format as fmt

    columns = ScalarColumns(["train/loss", "optim/lr"], np.array([0, 1, 0, 1], dtype=np.uint32),
                            np.array([3, 3, 4, 4]), np.array([0.5, 0.1, float("nan"), 0.1]),
                            np.array([10.0, 10.0, 11.0, 11.0]))
    extra = [("user/acc", 4, 0.9, 11.5), ("optim/lr", 5, 0.2, 12.0)]
    as_points = fmt.encode_batch(columns.points() + extra, [], [], 5)
    assert fmt.encode_batch(extra, [], [], 5, columns=columns) == as_points
    assert columns.last_values() == {"train/loss": pytest.approx(float("nan"), nan_ok=True), "optim/lr": 0.1}
    bad = ScalarColumns(["x"], np.array([1], dtype=np.uint32), np.array([0]), np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="one key"):
        fmt.encode_batch([], [], [], 0, columns=bad)  # a key with no name: refused, never written


def test_sinks_get_points_and_the_log_gets_columns(tmp_path):
    from autolog.testing import MemorySink

    sink = MemorySink()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, sinks=["local", sink], log_every=2) as run:
        _train(model, opt, batches(4))
    points = [p for b in sink.batches for p in b.scalars]
    assert all(b.columns is None for b in sink.batches)
    assert sorted((s, v) for n, s, v, _w in points if n == "train/loss") == sorted(read(run).metrics["train/loss"])


@pytest.mark.parametrize("hparams", ["none", "constant", "every step", "some steps", "renamed"])
@pytest.mark.parametrize("timing", ["off", "no samples", "samples", "first step unknown"])
def test_the_usual_rows_expand_as_the_general_path_expands_them(hparams, timing):
    """`_regular_columns` (a hand-off's usual rows, without a sort) gives the very columns of
    the general path, or declines."""
    from autolog.pipeline import buffer
    from autolog.pipeline.records import StepNames

    owner = StepNames("train/loss", "train/grad_norm")
    n = 7
    rows = []
    for i in range(n):
        hp = {"none": None,
              "constant": [("optim/lr", 0.1), ("optim/momentum", 0.9)] if i == 0 else SAME,
              "every step": [("optim/lr", 0.1 / (i + 1))],
              "some steps": [("optim/lr", 0.1 * 2 ** -(i // 3))] if i % 3 == 0 else SAME,
              "renamed": [("optim/lr" if i < 4 else "optim/lr_0", 0.1)] if i in (0, 4) else SAME}[hparams]
        samples = {"off": None, "no samples": 0, "samples": 32, "first step unknown": 16}[timing]
        rows.append((owner, 100 + 2 * i, 50.0 + 0.25 * i + 0.01 * i * i, None, None, hp, samples, None))
    losses = [float(i) / 3 for i in range(n)]
    previous = None if timing == "first step unknown" else 49.5
    args = (*list(zip(*rows))[:3], losses, *list(zip(*rows))[5:], 1000.0, previous)
    regular = buffer._regular_columns(*args)
    if hparams == "renamed":
        assert regular is None  # other names: the general path's case
        return
    general = buffer._sorted_columns(rows, losses, 1000.0, previous)[0]
    assert regular.names == general.names
    for field in ("keys", "steps", "values", "walls"):
        assert getattr(regular, field).dtype == getattr(general, field).dtype
        assert getattr(regular, field).tolist() == getattr(general, field).tolist(), field


@pytest.mark.parametrize("log", [None, "gradients", "all"])
def test_a_watched_models_steps_between_statistics_take_the_short_path(tmp_path, monkeypatch, log):
    """With a watched model, a step between statistics steps (its NaN/Inf check done before the
    step) has nothing after the step: the per-step path does not visit the watched models
    then; statistics steps still do, and every series is as before."""
    from autolog.capture.session import Capture

    visited = []
    real = Capture._watch_post
    monkeypatch.setattr(Capture, "_watch_post", lambda self, state, opt: (visited.append(self.run.step),
                                                                           real(self, state, opt)))
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(tmp_path, log_every=5) as run:
        autolog.watch(model, log=log)
        _train(model, opt, batches(12))
    assert set(visited) <= {0, 1, 5, 10}  # the first steps (general path), then statistics steps
    assert {5, 10} <= set(visited) or log is None
    data = read(run)
    assert sorted(series(data, "train/loss")) == list(range(12))
    assert sorted(series(data, "perf/samples_per_sec")) == list(range(1, 12))  # samples from the model's inputs
    if log is not None:
        assert sorted(series(data, "grad_norm/total")) == [0, 5, 10]
