"""The batch encoder's fast path: the same bytes and the same refusals as the plain encoder it
replaced, for every order of names; and the writer thread's time counted per hand-off."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

import autolog
from autolog.pipeline.records import Batch, HistogramRecord, RunInfo
from autolog.pipeline.writer import Pipeline
from autolog.store import format as fmt
from autolog.store.log import EventLog, keep_storable, read_batches


def _reference(scalars, histograms=(), step=0) -> bytes:
    """The encoder as it was before its fast path (one Python step per point): the format's pin."""
    header = {"step": step}
    arrays = []
    if scalars:
        names, steps, values, walls = zip(*scalars)
        index: dict = {}
        keys = [index.setdefault(n, len(index)) for n in names]
        if not all(type(n) is str for n in index):
            raise TypeError("names")

        def column(items, kinds, dtype):
            array = np.asarray(items)
            if array.dtype.kind not in kinds or (array.dtype.kind == "u" and dtype == "<i8" and array.max() >= 2 ** 63):
                raise ValueError("column")
            return array.astype(dtype, copy=False).tobytes()

        header["keys"], header["n"] = list(index), len(scalars)
        arrays += [np.asarray(keys, dtype="<u4").tobytes(), column(steps, "iu", "<i8"),
                   column(values, "fiub", "<f8"), column(walls, "fiub", "<f8")]
    if histograms:
        header["hist"] = [{"name": h.name, "step": h.step, "wall": float(h.wall_time), "bins": len(h.counts)}
                          for h in histograms]
        arrays += [np.asarray(h.edges, dtype="<f8").tobytes() + np.asarray(h.counts, dtype="<f8").tobytes()
                   for h in histograms]
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([b"B", fmt._U32.pack(len(head)), head] + arrays)


def _points(order: str, rng: random.Random, steps: int = 20, width: int = 7) -> list:
    names = [f"m/{i}" for i in range(width)]
    pts = [(n, s, rng.random(), 100.0 + s) for s in range(steps) for n in names]
    if order == "sparse":  # one name only every 5th step: no single cycle
        pts = [p for p in pts if p[0] != names[-1] or p[1] % 5 == 0]
    elif order == "shuffled":
        rng.shuffle(pts)
    elif order == "by name":
        pts.sort(key=lambda p: p[0])
    elif order == "one step":
        pts = pts[:width]
    elif order == "one point":
        pts = pts[:1]
    elif order == "one name":
        pts = [p for p in pts if p[0] == names[0]]
    elif order == "copies":  # equal names that are distinct objects, as an f-string per call makes them
        pts = [("".join(["m/", n[2:]]), s, v, w) for n, s, v, w in pts]
    elif order == "cycle then tail":  # a whole cycle repeated, then part of one
        pts = pts[:-3]
    elif order == "a name twice per cycle":
        pts = [p if p[0] != names[1] else (names[0],) + p[1:] for p in pts]
    elif order == "cycle with a stranger":  # periodic length, one name in the last cycle differs
        pts[-1] = ("stranger",) + pts[-1][1:]
    return pts


ORDERS = ["cycle", "sparse", "shuffled", "by name", "one step", "one point", "one name", "copies",
          "cycle then tail", "a name twice per cycle", "cycle with a stranger"]


@pytest.mark.parametrize("order", ORDERS)
def test_the_same_bytes_as_the_plain_encoder_for_every_order_of_names(order):
    rng = random.Random(order)
    pts = _points(order, rng)
    hists = [HistogramRecord("h", 3, [0.0, 1.0, 2.0], [4.0, 5.0], 7.0)]
    assert fmt.encode_batch(pts, hists, [], 20) == _reference(pts, hists, 20)
    record = fmt.decode_payload(memoryview(fmt.encode_batch(pts, [], [], 20)))
    assert [(record.names[k], s, v, w) for k, s, v, w in zip(record.keys.tolist(), record.steps.tolist(),
                                                              record.values.tolist(), record.walls.tolist())] == pts


BAD = [("float step", ("a", 1.5, 1.0, 0.0)), ("text step", ("a", "3", 1.0, 0.0)),
       ("bool step", ("a", True, 1.0, 0.0)), ("step beyond int64", ("a", 2 ** 63, 1.0, 0.0)),
       ("no step", ("a", None, 1.0, 0.0)), ("text value", ("a", 1, "x", 0.0)),
       ("no value", ("a", 1, None, 0.0)), ("huge value", ("a", 1, 10 ** 400, 0.0)),
       ("text wall", ("a", 1, 1.0, "now")), ("int name", (3, 1, 1.0, 0.0)),
       ("unhashable name", (["a"], 1, 1.0, 0.0))]


def _outcome(encode, pts):
    try:
        return encode(pts)
    except (ValueError, TypeError, OverflowError) as exc:
        return type(exc)


@pytest.mark.parametrize("what,point", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("where", ["alone", "first", "last"])
def test_every_refusal_of_the_plain_encoder_is_kept(what, point, where):
    """The same bytes or the same exception as the plain encoder (which takes a bool step among
    int ones, as numpy does: its refusals are the format's, kept as they were)."""
    good = [("a", 1, 1.0, 0.0), ("b", 1, 2.0, 0.0)] * 3
    pts = {"alone": [point], "first": [point] + good, "last": good + [point]}[where]
    expected = _outcome(_reference, pts)
    assert _outcome(lambda p: fmt.encode_batch(p, [], []), pts) == expected
    assert where != "alone" or isinstance(expected, type)  # alone, every one of them is refused


def test_a_sequence_per_point_is_refused_not_written_unreadable():
    with pytest.raises(ValueError):
        fmt.encode_batch([("a", 1, [1.0, 2.0], 0.0), ("b", 1, [3.0, 4.0], 0.0)], [], [])


def test_numpy_numbers_and_strided_histograms_encode_as_plain_ones():
    pts = [("a", np.int64(1), np.float32(0.5), 1.0), ("b", 2, True, np.float64(2.0))]
    assert fmt.encode_batch(pts, [], []) == _reference(pts)
    edges = np.arange(10.0)[::3]  # not contiguous
    counts = np.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[::2]
    strided = [HistogramRecord("h", 1, edges, counts, 0.0)]
    plain = [HistogramRecord("h", 1, edges.tolist(), counts.tolist(), 0.0)]
    assert fmt.encode_batch([], strided, []) == fmt.encode_batch([], plain, []) == _reference([], plain)


def test_one_bad_point_in_a_big_batch_costs_only_itself(tmp_path):
    pts = _points("cycle", random.Random(1), steps=100, width=30)
    bad = Batch(scalars=pts[:1500] + [("a", -1, 1.0, 0.0), ("b", 1, "x", 0.0), ("c", 1, np.float32(2), 0.0)]
                + pts[1500:], step=99)
    assert keep_storable(bad) == 1
    assert bad.scalars == pts[:1500] + [("a", -1, 1.0, 0.0), ("c", 1, np.float32(2), 0.0)] + pts[1500:]
    log = EventLog(str(tmp_path), fsync_secs=0)
    assert log.append(bad) is not None
    log.close()
    [(batch, _end)] = read_batches(os.path.join(tmp_path, fmt.EVENTS_FILE))
    assert len(batch.scalars) == 3002


class _Staged:
    def __init__(self, batch: Batch | None) -> None:
        self.batch = batch

    def resolve(self) -> Batch:
        if self.batch is None:
            raise RuntimeError("a failed conversion")
        return self.batch


def test_the_writer_thread_counts_its_hand_offs_and_their_cpu_time(tmp_path, capsys):
    pipeline = Pipeline([], RunInfo(id="r", name="r", project="p", path=str(tmp_path), config={}, meta={}),
                        fsync_secs=0)
    assert pipeline.writer_time == {"handoffs": 0, "thread_cpu_s": 0.0}
    for i in range(5):
        pipeline.submit(_Staged(Batch(scalars=[("a", i, float(i), 0.0)], step=i)))
    pipeline.submit(_Staged(None))  # a hand-off that fails is still one the writer spent time on
    assert pipeline.wait(10.0)
    got = pipeline.writer_time
    assert got["handoffs"] == 6 and isinstance(got["thread_cpu_s"], float) and got["thread_cpu_s"] >= 0.0
    pipeline.close(lambda: None, 10.0)
    assert pipeline.writer_time["handoffs"] == 6  # closing is no hand-off


def test_a_run_exposes_its_writer_time(tmp_path):
    with autolog.run(dir=str(tmp_path), sinks=["local"], log_every=5, flush_secs=3600) as run:
        for i in range(20):
            autolog.log("a", i)
        assert run.flush(wait=True)
        assert run.pipeline.writer_time["handoffs"] == run.flush_count
