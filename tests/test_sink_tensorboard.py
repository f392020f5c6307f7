"""TensorBoardSink and autolog.graph, read back with TensorBoard's own readers and plugins."""
from __future__ import annotations

import glob
import io
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tensorboard import data_compat
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto.graph_pb2 import GraphDef
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.util import tensor_util

from autolog.capture.graph import model_graph
from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult
from autolog.sinks.tensorboard import TensorBoardSink, histogram_summary

T0 = 1_700_000_000.25


def _run_info(tmp_path, run_id="r1", config=None, project="proj"):
    path = tmp_path / project / run_id
    path.mkdir(parents=True)
    return RunInfo(id=run_id, name=run_id, project=project, path=str(path),
                   config={"lr": 0.001, "optim": "adam"} if config is None else config,
                   meta={"start_timestamp": T0})


def _accumulator(logdir) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(logdir), size_guidance=dict.fromkeys(ea.DEFAULT_SIZE_GUIDANCE, 0))
    return acc.Reload()


def _text(acc, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def _hparams(acc) -> dict:
    try:
        return acc.PluginTagToContent("hparams")
    except KeyError:  # no hparams data at all
        return {}


def _finished(summary=None, config=None):
    return RunResult(status="finished", summary=summary or {}, meta={}, config=config or {})


# ------------------------------------------------------------------ scalars, flushing, layout

def test_scalars_at_their_step_and_wall_time_flushed_every_batch(tmp_path):
    run = _run_info(tmp_path)
    sink = TensorBoardSink()
    sink.open(run)
    assert sink.path == os.path.join(run.path, "tensorboard")
    points = [("train/loss", 0, 2.5, T0), ("optim/lr", 0, 0.001, T0),
              ("train/loss", 1, 1.25, T0 + 1.5), ("optim/lr", 1, 0.0009, T0 + 1.5),
              ("train/loss", 2, 0.1, T0 + 3.0)]
    sink.write(Batch(scalars=points[:2], step=0))
    sink.write(Batch(scalars=points[2:], step=2))

    # flushed at every batch: readable before close, as after a hard kill
    acc = _accumulator(sink.path)
    got = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
           for tag in acc.Tags()["scalars"]}
    expected = {}
    for name, step, value, wall in points:
        expected.setdefault(name, []).append((step, float(np.float32(value)), wall))
    assert got == expected

    sink.close(_finished({"train/loss": 0.1}))
    assert sink.path is None  # closed
    assert len(glob.glob(os.path.join(run.path, "tensorboard", "events.out.tfevents.*"))) == 1


def test_explicit_log_dir_gets_one_subdirectory_per_run(tmp_path):
    sink = TensorBoardSink(log_dir=tmp_path / "tb")
    sink.open(_run_info(tmp_path, "run-7"))
    assert sink.path == str(tmp_path / "tb" / "run-7")
    sink.close(_finished())
    assert glob.glob(str(tmp_path / "tb" / "run-7" / "events.out.tfevents.*"))


def test_summary_values_without_a_series_become_scalars_and_summary_text(tmp_path):
    sink = TensorBoardSink()
    sink.open(_run_info(tmp_path))
    sink.write(Batch(scalars=[("train/loss", 4, 0.5, T0)], step=4))
    sink.close(_finished({"train/loss": 0.5, "best_acc": 0.75, "note": "text"}))
    acc = _accumulator(os.path.join(tmp_path, "proj", "r1", "tensorboard"))
    assert [(e.step, e.value) for e in acc.Scalars("best_acc")] == [(4, 0.75)]
    assert [e.value for e in acc.Scalars("train/loss")] == [0.5]  # not written twice
    assert "note" not in acc.Tags()["scalars"]
    [(step, text)] = _text(acc, "summary")
    assert step == 4
    assert "| status | finished |" in text and "| best_acc | 0.75 |" in text


# ------------------------------------------------------------------ the event file's bytes

def _records(path):
    """(length header, its crc, data, data crc) of every TFRecord in an event file."""
    import struct

    with open(path, "rb") as fh:
        raw = fh.read()
    out, pos = [], 0
    while pos < len(raw):
        head = raw[pos:pos + 8]
        (length,) = struct.unpack("<Q", head)
        (head_crc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        data = raw[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
        out.append((head, head_crc, data, data_crc))
        pos += 16 + length
    assert pos == len(raw)
    return out


def test_event_file_is_what_tensorboards_own_writer_writes(tmp_path):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer.record_writer import RecordWriter

    from autolog.sinks.tensorboard import EventFile, masked_crc32c as fast_masked_crc32c

    sink = TensorBoardSink()
    sink.open(_run_info(tmp_path))
    points = [(name, step, value, T0 + step)
              for step in (0, 1, 127, 128, 16383, 16384, 2**21, 2**40)
              for name, value in (("train/loss", 1.0 / (step + 1)), ("x/é", -step), ("", 0.0),
                                  ("big", 1e40), ("nan", float("nan")))]
    sink.write(Batch(scalars=points, step=2**40, histograms=[
        HistogramRecord("h", 3, [0.0, 0.5, 1.0], [2.0, 3.0], T0)]))
    sink.close(_finished({"acc": 0.5}))
    [path] = glob.glob(os.path.join(tmp_path, "proj", "r1", "tensorboard", "events.out.tfevents.*"))
    assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\..+\.%d\.\d+" % os.getpid(),
                        os.path.basename(path))
    records = _records(path)
    # every CRC is tensorboard's own masked CRC32C of its bytes
    for head, head_crc, data, data_crc in records:
        assert head_crc == masked_crc32c(head) and data_crc == masked_crc32c(data)
    # and the file is byte for byte what tensorboard's (pure Python) RecordWriter writes
    buf = io.BytesIO()
    writer = RecordWriter(buf)
    for _, _, data, _ in records:
        writer.write(data)
    with open(path, "rb") as fh:
        assert fh.read() == buf.getvalue()
    events = [event_pb2.Event.FromString(data) for _, _, data, _ in records]
    assert events[0].file_version == "brain.Event:2"
    scalars = [(v.tag, e.step, e.wall_time) for e in events for v in e.summary.value
               if v.WhichOneof("value") == "simple_value"]
    assert scalars[:len(points)] == [(n, s, w) for n, s, _, w in points]
    for data in (b"", b"a", bytes(range(256)) * 9):
        assert fast_masked_crc32c(data) == masked_crc32c(data)

    # EventFile: tensorboard's file name and first event, in a directory it makes
    ef = EventFile(str(tmp_path / "new" / "dir"))
    ef.add_event(event_pb2.Event(step=3))
    ef.close()
    [(_, _, first, _), (_, _, data, _)] = _records(ef.path)
    assert event_pb2.Event.FromString(first).source_metadata.writer == \
        "tensorboard.summary.writer.event_file_writer"
    assert event_pb2.Event.FromString(data).step == 3


_names = st.sampled_from(["train/loss", "val/acc", "", "x/é", "a" * 200])
_steps = st.one_of(st.sampled_from([0, 1, 127, 128, 2**14, 2**21, -1, 2**63 - 1, -2**63]),
                   st.integers(-2**63, 2**63 - 1))
_walls = st.one_of(st.sampled_from([0.0, -0.0, T0]), st.floats(allow_nan=False))
_values = st.one_of(st.sampled_from([0.0, -0.0, 1e40, -1e40, 3.4028235e38, float("inf"),
                                     float("nan"), 1e-46]),
                    st.floats(), st.integers(-2**60, 2**60), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, st.sampled_from([0, 5]), _values, st.sampled_from([T0, 0.0])),
                max_size=12),
       st.lists(st.tuples(_names, _steps, _values, _walls), max_size=6))
def test_scalar_events_are_the_bytes_protobuf_writes(grouped, scattered):
    from tensorboard.compat.proto import event_pb2

    from autolog.sinks.tensorboard import scalar_events, scalar_summaries

    for points in (grouped, scattered, grouped + scattered):
        expected = [event_pb2.Event(summary=s, step=int(step), wall_time=float(wall)).SerializeToString()
                    for s, step, wall in scalar_summaries(points)]
        prefixes = {}
        got, last = scalar_events(points, prefixes)
        assert got == expected
        assert last == (max(p[1] for p in points) if points else None)
        assert set(prefixes) == {p[0] for p in points}
        assert scalar_events(points, prefixes)[0] == expected  # with the tags' prefixes kept


# ------------------------------------------------------------------ histograms

def test_histograms_keep_autolog_bins_as_the_histogram_plugin_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=5000)
    counts, edges = np.histogram(values, bins=64, range=(values.min(), values.max()))
    sink = TensorBoardSink()
    sink.open(_run_info(tmp_path))
    sink.write(Batch(histograms=[HistogramRecord("gradients/fc.weight", 3, edges.tolist(),
                                                 counts.astype(float).tolist(), T0 + 2)], step=3))
    sink.close(_finished())
    logdir = os.path.join(tmp_path, "proj", "r1", "tensorboard")

    [event] = _accumulator(logdir).Histograms("gradients/fc.weight")
    h = event.histogram_value
    assert (event.step, event.wall_time) == (3, T0 + 2)
    assert list(h.bucket_limit) == edges[1:].tolist()
    assert list(h.bucket) == counts.tolist()
    assert (h.min, h.max, h.num) == (edges[0], edges[-1], 5000)
    width = edges[1] - edges[0]  # the estimates are within half a bucket per value
    assert abs(h.sum - values.sum()) <= 5000 * width / 2
    assert abs(h.sum_squares - (values ** 2).sum()) <= 0.01 * (values ** 2).sum()

    # what the histogram plugin draws: [left, right, count] buckets, migrated by data_compat
    [file] = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    values_pb = [v for e in event_file_loader.EventFileLoader(file).Load()
                 for v in e.summary.value if v.tag == "gradients/fc.weight"]
    [migrated] = [data_compat.migrate_value(v) for v in values_pb]
    assert migrated.metadata.plugin_data.plugin_name == "histograms"
    buckets = tensor_util.make_ndarray(migrated.tensor)
    assert buckets.shape == (64, 3)
    assert buckets.dtype == np.float32  # the plugin's own precision
    np.testing.assert_array_equal(buckets[:, 0], edges[:-1].astype(np.float32))
    np.testing.assert_array_equal(buckets[:, 1], edges[1:].astype(np.float32))
    np.testing.assert_array_equal(buckets[:, 2], counts.astype(np.float32))


def test_histogram_rejects_mismatched_bins():
    with pytest.raises(ValueError, match="edges"):
        histogram_summary("h", [0.0, 1.0], [1.0, 2.0])


# ------------------------------------------------------------------ images, text, config

@pytest.mark.parametrize("channels", [1, 3, 4])
def test_images_and_figures(tmp_path, channels):
    run = _run_info(tmp_path)
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(6, 5, channels), dtype=np.uint8)
    figure = rng.integers(0, 256, size=(4, 7, 4), dtype=np.uint8)
    # the core writes the PNG of a media record; the sink reuses it
    os.makedirs(os.path.join(run.path, "media"))
    Image.fromarray(figure).save(os.path.join(run.path, "media", "fig.png"))
    sink = TensorBoardSink()
    sink.open(run)
    sink.write(Batch(media=[
        MediaRecord("image", "samples/input", 2, T0 + 1, data=image),  # no PNG: encoded here
        MediaRecord("figure", "plots/curve", 5, T0 + 2, data=figure, path="media/fig.png"),
    ], step=5))
    sink.close(_finished())
    acc = _accumulator(sink_path(run))

    [img] = acc.Images("samples/input")
    assert (img.step, img.wall_time, img.height, img.width) == (2, T0 + 1, 6, 5)
    decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    np.testing.assert_array_equal(decoded.reshape(image.shape), image)
    [fig] = acc.Images("plots/curve")
    assert (fig.step, fig.height, fig.width) == (5, 4, 7)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(fig.encoded_image_string))),
                                  figure)


def sink_path(run):
    return os.path.join(run.path, "tensorboard")


def test_config_table_at_open_text_media_and_config_updates(tmp_path):
    config = {"lr": 0.001, "model.layers": [64, 32], "name": "a|b", "seed": None}
    run = _run_info(tmp_path, config=config)
    sink = TensorBoardSink()
    sink.open(run)
    acc = _accumulator(sink_path(run))
    [(step, table)] = _text(acc, "config")
    assert step == 0
    assert table.splitlines() == ["| key | value |", "|---|---|", "| lr | 0.001 |",
                                  "| model.layers | [64, 32] |", "| name | a\\|b |",
                                  "| seed | None |"]
    sink.write(Batch(media=[MediaRecord("text", "notes/epoch", 3, T0, data="**good** run")],
                     config={"epochs": 3}, step=3))
    sink.close(_finished())
    acc = _accumulator(sink_path(run))
    assert _text(acc, "notes/epoch") == [(3, "**good** run")]
    tables = _text(acc, "config")
    assert [s for s, _ in tables] == [0, 3] and "| epochs | 3 |" in tables[1][1]
    assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"


# ------------------------------------------------------------------ graph

class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.fc(x)))))


def test_model_graph_leaves_model_and_rng_untouched():
    torch.manual_seed(0)
    model = _Net().train()
    model(torch.randn(16, 4))  # non-trivial BatchNorm statistics
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append("hook"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(3, 4)
    random.seed(1)
    np.random.seed(1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    graph = model_graph(model, example)

    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key
    assert model.training and all(m.training for m in model.modules())
    assert calls == []  # the user's hooks never saw the tracing forward pass
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    np.testing.assert_array_equal(np.random.get_state()[1], states[2])

    assert graph["text"] == str(model)
    nodes = GraphDef.FromString(graph["graph_def"]).node
    assert any("Linear[fc]" in n.name for n in nodes)
    assert any("BatchNorm1d[bn]" in n.name for n in nodes)


def test_model_graph_keyword_inputs_and_wrapped_models():
    class KW(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 1)

        def forward(self, x, scale):
            return self.fc(x) * scale

    inner = KW()
    graph = model_graph(inner, {"x": torch.randn(2, 3), "scale": torch.tensor(2.0)})
    assert GraphDef.FromString(graph["graph_def"]).node
    wrapped = model_graph(torch.nn.DataParallel(torch.nn.Linear(3, 1)), torch.randn(2, 3))
    assert wrapped["text"].startswith("Linear(") and "graph_def" in wrapped


def test_model_graph_falls_back_to_text():
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Untraceable()
    assert model_graph(model, torch.randn(1)) == {"text": str(model)}


def test_model_graph_without_tensorboard(monkeypatch):
    # failure injection: the optional backend is not importable
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard._pytorch_graph", None)
    model = torch.nn.Linear(2, 2)
    assert model_graph(model, torch.randn(1, 2)) == {"text": str(model)}


def test_graph_media_shows_in_the_graphs_tab(tmp_path):
    model = _Net()
    graph = model_graph(model, torch.randn(3, 4))
    run = _run_info(tmp_path)
    sink = TensorBoardSink()
    sink.open(run)
    sink.write(Batch(media=[MediaRecord("graph", "model", 0, T0, data=graph)]))
    sink.close(_finished())
    acc = _accumulator(sink_path(run))
    assert acc.Tags()["graph"]
    assert acc.Graph() == GraphDef.FromString(graph["graph_def"])
    [(step, text)] = _text(acc, "model")
    assert step == 0 and "    (fc): Linear(in_features=4, out_features=8, bias=True)" in text


# ------------------------------------------------------------------ hparams

def test_hparams_entry_written_at_close(tmp_path):
    config = {"lr": 0.001, "optim": "adam", "amp": True, "layers": [1, 2], "seed": None,
              "wd": np.float32(0.5)}
    run = _run_info(tmp_path, config=config)
    sink = TensorBoardSink()
    sink.open(run)
    sink.write(Batch(scalars=[("train/loss", 1, 0.5, T0)], config={"epochs": 2}, step=1))
    assert not _hparams(_accumulator(sink_path(run)))  # written at close
    sink.close(RunResult("failed", {"train/loss": 0.5}, {}, {}))

    content = _hparams(_accumulator(sink_path(run)))
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG])
    assert set(start.hparams) == set(config) | {"epochs"}
    assert start.hparams["lr"].number_value == 0.001
    assert start.hparams["optim"].string_value == "adam"
    assert start.hparams["amp"].bool_value is True
    assert start.hparams["layers"].string_value == "[1, 2]"
    assert start.hparams["seed"].string_value == "None"
    assert start.hparams["wd"].number_value == 0.5
    assert start.hparams["epochs"].number_value == 2
    assert start.group_name == "r1" and start.start_time_secs == T0
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == 2  # STATUS_FAILURE


def test_hparams_tab_compares_runs(tmp_path):
    """Through the hparams plugin's own handlers, as TensorBoard's HPARAMS tab calls them."""
    from google.protobuf import json_format
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment
    from tensorboard.plugins.hparams import list_session_groups

    for run_id, lr, final in [("a", 0.1, 0.3), ("b", 0.01, 0.2)]:
        sink = TensorBoardSink()
        sink.open(_run_info(tmp_path, run_id, config={"lr": lr, "optim": "sgd"}))
        sink.write(Batch(scalars=[("train/loss", 0, 1.0, T0), ("train/loss", 9, final, T0 + 9)],
                         step=9))
        sink.close(_finished({"train/loss": final, "best_acc": 1 - final}))

    root = str(tmp_path / "proj")  # tensorboard --logdir <dir>/<project>
    mux = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(root)
    mux.Reload()
    tb = base_plugin.TBContext(logdir=root, multiplexer=mux, plugin_name_to_instance={},
                               data_provider=data_provider.MultiplexerDataProvider(mux, root))
    context = backend_context.Context(tb)
    ctx = tb_context.RequestContext()

    experiment = get_experiment.Handler(ctx, context, "", api_pb2.GetExperimentRequest()).run()
    assert {h.name for h in experiment.hparam_infos} == {"lr", "optim"}
    assert {h.name: h.differs for h in experiment.hparam_infos} == {"lr": True, "optim": False}
    assert {m.name.tag for m in experiment.metric_infos} == {"train/loss", "best_acc"}

    request = json_format.Parse(
        '{"startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_SUCCESS"],'
        ' "colParams": [{"metric": {"tag": "train/loss"}, "order": "ORDER_ASC"}]}',
        api_pb2.ListSessionGroupsRequest())
    groups = list_session_groups.Handler(ctx, context, "", request).run().session_groups
    rows = [(g.name, g.hparams["lr"].number_value,
             {m.name.tag: round(m.value, 6) for m in g.metric_values}) for g in groups]
    assert rows == [("b", 0.01, {"train/loss": 0.2, "best_acc": 0.8}),
                    ("a", 0.1, {"train/loss": 0.3, "best_acc": 0.7})]


def test_hparams_can_be_turned_off(tmp_path):
    run = _run_info(tmp_path)
    sink = TensorBoardSink(hparams=False)
    sink.open(run)
    sink.close(_finished())
    assert not _hparams(_accumulator(sink_path(run)))


# ------------------------------------------------------------------ registry and imports

def test_registered_by_name_and_backend_imported_lazily():
    from autolog.sinks import resolve_sink

    assert isinstance(resolve_sink("tensorboard"), TensorBoardSink)
    code = ("import sys, autolog, autolog.sinks; "
            "assert 'tensorboard' not in sys.modules, 'tensorboard imported eagerly'; "
            "assert 'autolog.sinks.tensorboard' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------ end to end, through the API

def test_run_with_local_and_tensorboard_sinks_agree(tmp_path):
    import autolog

    with autolog.run(project="e2e", dir=str(tmp_path / "runs"), sinks=["local", "tensorboard"],
                     config={"lr": 0.1, "model": {"width": 8}}) as run:
        for step in range(6):
            autolog.log({"train/loss": 1.0 / (step + 1), "val/acc": step / 7}, step=step)
        autolog.log("lr", 0.05)
        autolog.log_image("samples", np.full((3, 4, 3), 200, dtype=np.uint8), step=5)
        autolog.log_text("notes", "half way", step=5)
        assert run.flush(wait=True)
        logdir = os.path.join(run.path, "tensorboard")
        mid = _accumulator(logdir)  # everything handed off is already on disk
        assert [e.step for e in mid.Scalars("train/loss")] == list(range(6))
        run_path = run.path

    data = autolog.read_run(run_path)
    assert data.status == "finished"
    acc = _accumulator(logdir)
    assert set(acc.Tags()["scalars"]) == set(data.metrics)
    for name, series in data.metrics.items():
        tb = sorted((e.step, e.value) for e in acc.Scalars(name))
        assert tb == [(step, float(np.float32(value))) for step, value in series], name

    [image] = acc.Images("samples")
    [media] = [m for m in data.media if m.get("name") == "samples"]
    with open(os.path.join(run_path, media["path"]), "rb") as fh:
        assert image.encoded_image_string == fh.read()
    assert _text(acc, "notes") == [(5, "half way")]
    [(_, table)] = _text(acc, "config")
    assert "| lr | 0.1 |" in table and "| model.width | 8 |" in table

    start = hp_metadata.parse_session_start_info_plugin_data(
        _hparams(acc)[hp_metadata.SESSION_START_INFO_TAG])
    assert {k: v.number_value for k, v in start.hparams.items()} == data.config
    [(_, summary)] = _text(acc, "summary")
    assert "| status | finished |" in summary
