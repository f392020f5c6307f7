"""WandbSink against real offline W&B runs, read back from the run's own .wandb records."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import wandb

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult
from autolog.sinks.wandb import WandbSink, wandb_run_id
from autolog.sinks.wandb_records import (BLOCK_SIZE, HEADER, find_wandb_file, iter_chunk_payloads,
                                   read_wandb_run, wait_for_exit_record)



EDGES = [i / 64 for i in range(65)]
COUNTS = [float(i % 7) for i in range(64)]
IMAGE = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
GRAY = np.full((3, 2, 1), 200, dtype=np.uint8)
LONG = "x" * (BLOCK_SIZE + 5000)  # one record spread over several 32 KiB blocks
CONFIG = {"lr": 0.001, "model.depth": 3, "api_key": "***", "notes": LONG}


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline, silent W&B with every directory it writes inside a temporary folder."""
    root = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                    "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(root))
        mp.delenv("WANDB_API_KEY", raising=False)
        yield root


def _info(tmp, run_id="20250101-120000:ab/cd", **kw) -> RunInfo:
    path = tmp / "proj" / "run"
    return RunInfo(id=run_id, name="my-run", project="autolog-test", path=str(path),
                   config=dict(CONFIG), meta={}, tags=("a", "t" * 80), **kw)


def _in_thread(fn):
    """Run `fn` on another thread, as the pipeline's sink worker does; re-raise its error."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _batches():
    b1 = Batch(
        scalars=[("train/loss", 2, 0.5, 1.0), ("train/loss", 0, 2.0, 1.0),
                 ("train/loss", 1, 1.0, 1.0),
                 ("val/acc", 2, 0.75, 1.0), ("weird", 1, float("nan"), 1.0)],
        histograms=[HistogramRecord("gradients/w", 1, EDGES, COUNTS, 1.0)],
        media=[MediaRecord("image", "samples", 2, 1.0, data=IMAGE, path="media/samples_2.png"),
               MediaRecord("image", "gray", 2, 1.0, data=GRAY),
               MediaRecord("text", "note", 1, 1.0, data="<b>a & b</b>")],
        step=2)
    b2 = Batch(scalars=[("val/loss", 2, 0.6, 2.0), ("train/loss", 3, 0.25, 2.0),
                        ("train/loss", 1, 99.0, 2.0),  # late: below step 2, already logged
                        ("train/loss", 4, 0.125, 2.0)],
               config={"lr": 0.5}, step=4)
    b3 = Batch(scalars=[("train/loss", 10, 0.0625, 3.0)], step=10)
    return [b1, b2, b3]


@pytest.fixture(scope="module")
def finished(wandb_env, tmp_path_factory):
    """A user's own global W&B run is active while the sink writes a whole run on a thread."""
    tmp = tmp_path_factory.mktemp("finished")
    user = wandb.init(project="user-project", dir=str(tmp), config={"user_key": 1})
    before = (wandb.run, wandb.config, wandb.summary, wandb.log)
    sink = WandbSink()
    info = _info(tmp)

    def go():
        sink.open(info)
        for b in _batches():
            sink.write(b)
        sink.close(RunResult(status="finished", meta={},
                             summary={"train/loss": 0.0625, "return/score": 0.9},
                             config={**CONFIG, "lr": 0.5}))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _in_thread(go)
    after = (wandb.run, wandb.config, wandb.summary, wandb.log)
    user.log({"user/x": 1.0}, step=0)
    user.finish()
    # run.finish() returns before wandb-core writes the log's last block (the sink waits for it)
    assert wait_for_exit_record(find_wandb_file(os.path.join(tmp, "wandb")))
    return {"sink": sink, "info": info, "tmp": tmp, "records": read_wandb_run(info.path),
            "user": read_wandb_run(os.path.join(tmp, "wandb")), "before": before, "after": after,
            "warnings": [w for w in caught if "W&B history only moves forward" in str(w.message)]}


def test_history_rows_one_per_step_ascending(finished):
    rows = finished["records"].history
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4, 10]
    by_step = {r["_step"]: r for r in rows}
    assert by_step[0]["train/loss"] == 2.0
    assert by_step[1]["train/loss"] == 1.0  # the late 99.0 was dropped
    assert np.isnan(by_step[1]["weird"])
    # the step-2 row holds everything of step 2, including the next batch's val/loss
    assert by_step[2]["train/loss"] == 0.5 and by_step[2]["val/acc"] == 0.75
    assert by_step[2]["val/loss"] == 0.6
    assert finished["records"].series("train/loss") == [
        (0, 2.0), (1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125), (10, 0.0625)]


def test_late_steps_dropped_with_one_warning(finished):
    assert finished["sink"].dropped_points == 1
    assert len(finished["warnings"]) == 1


def test_histogram_from_precomputed_bins(finished):
    (row,) = [r for r in finished["records"].history if "gradients/w" in r]
    hist = row["gradients/w"]
    assert row["_step"] == 1 and hist["_type"] == "histogram"
    assert hist["bins"] == pytest.approx(EDGES) and hist["values"] == pytest.approx(COUNTS)


def test_images_and_text(finished):
    records = finished["records"]
    files = os.path.join(os.path.dirname(records.path), "files")
    row = next(r for r in records.history if r["_step"] == 2)
    for key, (h, w) in {"samples": (4, 5), "gray": (3, 2)}.items():
        img = row[key]
        assert img["_type"] == "image-file" and (img["height"], img["width"]) == (h, w)
        assert os.path.isfile(os.path.join(files, img["path"]))
    text = next(r for r in records.history if r["_step"] == 1)["note"]
    assert text["_type"] == "html-file"
    with open(os.path.join(files, text["path"]), encoding="utf-8") as fh:
        assert "&lt;b&gt;a &amp; b&lt;/b&gt;" in fh.read()


def test_identity_config_summary_exit(finished):
    records, info = finished["records"], finished["info"]
    assert records.run_id == "20250101-120000-ab-cd" == wandb_run_id(info.id)
    assert (records.project, records.name) == ("autolog-test", "my-run")
    assert records.tags == ("a", "t" * 64)
    assert records.config == {**CONFIG, "lr": 0.5}  # redacted stays redacted; long value intact
    assert records.summary["return/score"] == 0.9 and records.summary["train/loss"] == 0.0625
    assert records.exit_code == 0
    # the W&B files live inside the autolog run directory
    assert records.path.startswith(os.path.join(info.path, "wandb", "offline-run-"))
    assert os.path.getsize(records.path) > BLOCK_SIZE


def test_users_global_run_untouched(finished):
    assert finished["before"][0] is not None
    assert all(a is b for a, b in zip(finished["before"], finished["after"]))
    user = finished["user"]
    assert user.project == "user-project"
    assert user.config == {"user_key": 1}
    assert [set(r) - {"_step", "_runtime", "_timestamp"} for r in user.history] == [{"user/x"}]
    assert user.exit_code == 0


@pytest.mark.parametrize("status,code", [("failed", 1), ("interrupted", 255)])
def test_exit_code_of_unsuccessful_runs(wandb_env, tmp_path, status, code):
    assert wandb.run is None
    sink = WandbSink(mode="offline", group="g")  # extra init kwargs go to wandb.init
    info = _info(tmp_path, run_id=f"r-{status}")
    sink.open(info)
    sink.write(Batch(scalars=[("train/loss", 0, 1.5, 0.0)]))
    sink.close(RunResult(status=status, summary={"train/loss": 1.5}, meta={}, config={}))
    assert wandb.run is None
    records = read_wandb_run(info.path)
    assert records.exit_code == code
    assert records.series("train/loss") == [(0, 1.5)]


def test_init_args(tmp_path, monkeypatch):
    info = _info(tmp_path, mode="offline")
    args = WandbSink(settings={"console": "wrap", "x_disable_stats": False}).init_args(info)
    assert args["mode"] == "offline" and args["reinit"] == "create_new"
    assert args["dir"] == info.path and args["id"] == "20250101-120000-ab-cd"
    assert args["settings"]["console"] == "wrap" and args["settings"]["x_disable_stats"] is False
    assert args["settings"]["save_code"] is False
    # autolog's default "online" defers to W&B (WANDB_MODE); the sink's own mode wins over all
    assert WandbSink().init_args(_info(tmp_path, mode="online"))["mode"] is None
    assert WandbSink(mode="disabled", project="p").init_args(info)["mode"] == "disabled"
    user_settings = wandb.Settings(console="redirect")
    merged = WandbSink(settings=user_settings).init_args(info)["settings"]
    assert merged["console"] == "redirect" and merged["x_disable_stats"] is True
    assert wandb_run_id("::") is None


def test_reader_framing(finished, tmp_path):
    with open(finished["records"].path, "rb") as fh:
        data = fh.read()
    assert data.startswith(HEADER) and HEADER == b":W&B\xe1\xbe\x00"
    complete = list(iter_chunk_payloads(data))
    # a killed writer leaves a torn last record: reading stops before it, quietly
    assert list(iter_chunk_payloads(data[:-3])) == complete[:-1]
    corrupt = bytearray(data)
    corrupt[len(HEADER) + 8] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        list(iter_chunk_payloads(bytes(corrupt)))
    with pytest.raises(ValueError, match="header"):
        list(iter_chunk_payloads(b"nope" + data[4:]))
    # a copy of the file alone reads the same
    copy = tmp_path / "copy.wandb"
    shutil.copy(finished["records"].path, copy)
    assert read_wandb_run(copy).history == finished["records"].history


CHILD = """
import sys
def hook(t, e, tb):
    print('PREVIOUS HOOK', file=sys.stderr)
    sys.__excepthook__(t, e, tb)
sys.excepthook = hook
import autolog, autolog.sinks.wandb_records
from autolog.sinks.wandb import WandbSink
assert 'wandb' not in sys.modules, 'wandb imported before the sink opened'
run = autolog.run(project='p', dir=sys.argv[1], sinks=[WandbSink()], log_every=1000)
autolog.log({'a': 1.0}, step=0)
run.flush(wait=True)  # the sink is open: W&B's service runs, its exit handlers are set
autolog.log({'a': 2.0}, step=1)  # handed off only when the run ends
print(run.path)
if sys.argv[2] == 'raise':
    raise RuntimeError('boom')
"""


@pytest.mark.parametrize("end", ["raise", "exit"])
def test_process_end_with_an_open_run(tmp_path, end):
    """A run still open when the script raises or just ends reaches W&B whole; the traceback is
    printed once though W&B's service wraps an existing excepthook; importing the sink and the
    reader does not import wandb."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": root}
    env.update({k: str(tmp_path) for k in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                                           "WANDB_DATA_DIR")})
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), end], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "failed in close" not in proc.stderr, proc.stderr
    records = read_wandb_run(proc.stdout.strip().splitlines()[-1])
    assert records.series("a") == [(0, 1.0), (1, 2.0)]
    if end == "raise":
        assert proc.returncode == 1
        assert proc.stderr.count("RuntimeError: boom") == 1, proc.stderr
        assert proc.stderr.count("PREVIOUS HOOK") == 1
        assert records.exit_code == 1
    else:
        assert proc.returncode == 0, proc.stderr
        assert records.exit_code == 0


def test_end_to_end_matches_the_local_store(tmp_path):
    import torch

    import autolog

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with autolog.run(project="e2e", name="wandb-e2e", dir=str(tmp_path), log_every=2,
                     sinks=["local", WandbSink(mode="offline")],
                     config={"lr": 0.1, "password": "hunter2"}) as run:
        autolog.watch(model, log="all", log_every=2, graph=True)
        for step in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            autolog.log({"val/acc": step / 10})
        autolog.log_image("samples", np.zeros((4, 4, 3), np.uint8))
        autolog.log_text("notes", "a <b> c")
    data = autolog.read_run(run.path)
    records = read_wandb_run(run.path)
    assert data.status == "finished" and records.exit_code == 0
    assert (records.run_id, records.name, records.project) == (data.id, "wandb-e2e", "e2e")
    assert records.config == data.config and data.config["password"] == "***"
    assert {"train/loss", "optim/lr", "val/acc", "grad_norm/total"} <= set(data.metrics)
    assert {"gradients/weight", "parameters/bias"} <= set(data.histograms)
    for name, series in data.metrics.items():
        got = records.series(name)
        assert [s for s, _ in got] == [s for s, _ in series], name
        assert [v for _, v in got] == pytest.approx([v for _, v in series], nan_ok=True), name
    for name, points in data.histograms.items():
        for step, edges, counts in points:
            (hist,) = [r[name] for r in records.history if r["_step"] == step and name in r]
            assert hist["bins"] == pytest.approx(edges) and hist["values"] == pytest.approx(counts)
    assert {m["kind"] for m in data.media} >= {"image", "text", "graph"}
    for m in data.media:  # images as image panels; text and the model's printed form as HTML
        (value,) = [r[m["name"]] for r in records.history
                    if r["_step"] == m["step"] and m["name"] in r]
        assert value["_type"] == ("image-file" if m["kind"] == "image" else "html-file"), m
    for key, value in data.summary.items():
        assert records.summary[key] == pytest.approx(value, nan_ok=True), key
