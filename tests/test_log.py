"""autolog.log and the media calls: accepted values, checks, steps, threads."""
import math
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import autolog


def test_scalar_kinds_and_nested_dicts(autolog_run):
    t = torch.tensor(2.5, requires_grad=True) * 1
    autolog.log({"py": 1, "flt": 0.5, "np": np.float32(1.5), "np64": np.int64(3), "t0": t,
                 "t1": torch.tensor([4.0], dtype=torch.bfloat16), "nested": {"a": {"b": 7}}, "flag": True})
    autolog.log("single", torch.tensor(9, dtype=torch.int32))
    autolog_run.flush(wait=True)
    got = {n: v for n, _s, v, _w in autolog_run.sink.points()}
    assert got == {"py": 1.0, "flt": 0.5, "np": 1.5, "np64": 3.0, "t0": 2.5, "t1": 4.0,
                   "nested/a/b": 7.0, "flag": 1.0, "single": 9.0}
    assert all(isinstance(v, float) for v in got.values())


def test_tensors_stay_on_device_until_handoff(autolog_run):
    value = torch.tensor(3.0)
    autolog.log("t", value)
    [(name, _step, held, _wall)] = autolog_run.buffer.scalars
    assert isinstance(held, torch.Tensor)  # not converted on the training thread
    autolog_run.flush(wait=True)
    assert autolog_run.sink.scalars("t") == [(0, 3.0)]


@pytest.mark.parametrize("data,exc,needle", [
    ({"ok": 1.0, "bad": "high"}, TypeError, "'bad'"),
    ({"ok": 1.0, "vec": torch.ones(3)}, ValueError, "'vec'.*shape \\(3,\\)"),
    ({"ok": 1.0, "none": None}, TypeError, "'none'"),
    ({"ok": 1.0, 3: 1.0}, TypeError, "3"),
    ({"ok": 1.0, "arr": np.ones(2)}, ValueError, "'arr'"),
    ({"ok": 1.0, "": 1.0}, TypeError, "non-empty"),
    ({"ok": 1.0, "c": torch.tensor(1j)}, TypeError, "'c'"),
])
def test_bad_input_raises_naming_the_key_and_records_nothing(autolog_run, data, exc, needle):
    with pytest.raises(exc, match=needle):
        autolog.log(data)
    autolog_run.flush(wait=True)
    assert autolog_run.sink.points() == []  # "ok" was not recorded either


def test_bad_step_and_bad_call_shapes(autolog_run):
    with pytest.raises(ValueError, match="step"):  # out of range / non-integral: ValueError (issue 10.5)
        autolog.log({"a": 1}, step=-1)
    with pytest.raises(ValueError, match="step"):
        autolog.log({"a": 1}, step=1.5)
    with pytest.raises(TypeError, match="either a dict"):
        autolog.log({"a": 1}, 2)
    with pytest.raises(TypeError, match="expected a dict"):
        autolog.log([1, 2])


def test_nan_and_inf_are_stored(tmp_path):
    with autolog.run(sinks=["local"]) as run:
        autolog.log({"nan": float("nan"), "inf": float("inf"), "ninf": torch.tensor(-math.inf)})
    data = autolog.read_run(run.path)
    assert math.isnan(data.metrics["nan"][0][1])
    assert data.metrics["inf"] == [(0, math.inf)] and data.metrics["ninf"] == [(0, -math.inf)]
    assert math.isnan(data.summary["nan"])


def test_steps_explicit_and_automatic(tmp_path):
    with autolog.run(sinks=["local"], log_every=1000) as run:
        autolog.log({"a": 1, "b": 2})     # step 0
        autolog.log({"c": 3})             # a new key: still step 0
        autolog.log({"a": 4})             # "a" again with no optimizer in the run: step 1
        autolog.log({"late": 5}, step=10)  # explicit step, the run's step is unchanged
        autolog.log({"a": 6})             # step 2
    m = autolog.read_run(run.path).metrics
    assert m["a"] == [(0, 1.0), (1, 4.0), (2, 6.0)]
    assert m["b"] == [(0, 2.0)] and m["c"] == [(0, 3.0)] and m["late"] == [(10, 5.0)]


def test_metrics_sorted_by_step_whatever_the_logging_order(tmp_path):
    with autolog.run(sinks=["local"]) as run:
        for s in (5, 1, 3):
            autolog.log("x", s, step=s)
            run.flush()
    assert autolog.read_run(run.path).metrics["x"] == [(1, 1.0), (3, 3.0), (5, 5.0)]


def test_log_outside_a_run_warns_once_and_is_ignored():
    import autolog.api as api
    api._warned_no_run = False
    with pytest.warns(UserWarning, match="outside a run"):
        autolog.log("a", 1.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autolog.log("a", 1.0)


def test_log_from_many_threads(tmp_path):
    with autolog.run(sinks=["local"], log_every=7) as run:
        def worker(k):
            for i in range(500):
                autolog.log(f"t{k}", float(i), step=i)
                if i % 100 == 0:
                    run.flush()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    m = autolog.read_run(run.path).metrics
    for k in range(4):
        assert m[f"t{k}"] == [(i, float(i)) for i in range(500)]


def test_images_figures_and_text_are_stored_in_the_run(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hwc = (np.arange(4 * 5 * 3) % 255).astype(np.uint8).reshape(4, 5, 3)
    with autolog.run(sinks=["local"]) as run:
        autolog.log_image("img/hwc", hwc)
        autolog.log_image("img/chw", torch.from_numpy(hwc).permute(2, 0, 1).float() / 255.0)
        autolog.log_image("img/gray", np.zeros((3, 3)))
        autolog.log_image("img/pil", Image.fromarray(hwc))
        fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
        ax.plot([0, 1], [1, 0])
        autolog.log_figure("fig", fig, close=True)
        autolog.log_text("notes", "hello **world**")
        with pytest.raises(ValueError, match="img/bad"):
            autolog.log_image("img/bad", np.zeros((2, 3, 4, 5)))
        with pytest.raises(TypeError, match="notes2"):
            autolog.log_text("notes2", 5)
    data = autolog.read_run(run.path)
    by_name = {m["name"]: m for m in data.media}
    assert set(by_name) == {"img/hwc", "img/chw", "img/gray", "img/pil", "fig", "notes"}
    assert by_name["notes"]["text"] == "hello **world**"
    for name in ("img/hwc", "img/pil"):
        assert np.array_equal(np.asarray(Image.open(os.path.join(run.path, by_name[name]["path"]))), hwc)
    chw = np.asarray(Image.open(os.path.join(run.path, by_name["img/chw"]["path"])))
    assert np.abs(chw.astype(int) - hwc).max() <= 1
    assert Image.open(os.path.join(run.path, by_name["fig"]["path"])).size == (100, 100)
