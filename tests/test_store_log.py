"""The run's record log: `EventLog` appends batches, `read_batches` reads them back."""
from __future__ import annotations

import os

import numpy as np

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord
from autolog.store import format as fmt
from autolog.store.log import EventLog, read_batches


def _batch(i: int) -> Batch:
    return Batch(scalars=[("train/loss", i, 1.0 / (i + 1), 100.0 + i), (f"k{i % 3}", i, float(i), 100.0 + i)],
                 histograms=[HistogramRecord("w", i, [0.0, 0.5, 1.0], [float(i), 2.0], 100.0 + i)] if i % 2 else [],
                 media=[MediaRecord("text", "note", i, 100.0 + i, data=f"step {i}")] if i % 3 == 0 else [],
                 step=i)


def _points(batches):
    return [p for b in batches for p in b.scalars]


def test_appended_batches_read_back_with_their_end_offsets(tmp_path):
    log = EventLog(str(tmp_path), fsync_secs=0)
    written = [_batch(i) for i in range(6)]
    ends = [log.append(b) for b in written]
    log.close()
    path = os.path.join(tmp_path, fmt.EVENTS_FILE)
    assert ends[-1] == os.path.getsize(path) and ends == sorted(ends)
    read = list(read_batches(path))
    assert _points(b for b, _ in read) == _points(written)
    assert [h for b, _ in read for h in b.histograms] == [h for b in written for h in b.histograms]
    assert [(m.kind, m.name, m.step, m.data) for b, _ in read for m in b.media] == \
        [(m.kind, m.name, m.step, m.data) for b in written for m in b.media]
    # resuming from an offset yields exactly what follows it
    resumed = list(read_batches(path, ends[2]))
    assert _points(b for b, _ in resumed) == _points(written[3:])
    assert resumed[-1][1] == ends[-1]


def test_append_never_raises_when_the_directory_is_gone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = EventLog(str(run_dir))
    log.close()
    os.remove(run_dir / fmt.EVENTS_FILE)
    os.rmdir(run_dir)
    log = EventLog(str(run_dir))
    assert log.append(_batch(1)) is None and log.append(_batch(2)) is None
    log.close()
    assert log.errors["count"] >= 2 and "FileNotFoundError" in log.errors["first_error"]
    assert log.errors["lost"]["scalars"] == 4
    assert capsys.readouterr().err.count("cannot write") == 1


def test_a_value_the_log_cannot_store_costs_only_itself(tmp_path):
    log = EventLog(str(tmp_path), fsync_secs=0)
    bad = Batch(scalars=[("ok", 1, 1.0, 0.0), ("huge step", 2 ** 63, 1.0, 0.0), (3, 1, 1.0, 0.0),
                         ("not a number", 1, "x", 0.0), ("ok", 2, 2.0, 0.0)],
                histograms=[HistogramRecord("h", 1, [0.0, 1.0], [1.0, 2.0], 0.0),  # edges/counts mismatch
                            HistogramRecord("g", 1, [0.0, 1.0], [3.0], 0.0)],
                config={"a": 1, (1, 2): "tuple key"}, step=2)
    assert log.append(bad) is not None
    log.close()
    [(batch, _end)] = read_batches(os.path.join(tmp_path, fmt.EVENTS_FILE))
    assert batch.scalars == [("ok", 1, 1.0, 0.0), ("ok", 2, 2.0, 0.0)] == bad.scalars  # left as stored
    assert [h.name for h in batch.histograms] == ["g"] and batch.config is None
    assert log.dropped_values == 5 and log.errors == {}


def test_a_follower_reads_from_any_offset_it_was_given(tmp_path):
    log = EventLog(str(tmp_path), fsync_secs=0)
    path = os.path.join(tmp_path, fmt.EVENTS_FILE)
    first = log.append(_batch(0))
    assert [b.step for b, _ in read_batches(path, first)] == []
    ends = [log.append(_batch(i)) for i in range(1, 5)]
    assert [b.step for b, _ in read_batches(path, first)] == [1, 2, 3, 4]
    assert [e for _, e in read_batches(path, first)] == ends
    assert [b.step for b, _ in read_batches(path, first + 5)] == [2, 3, 4]  # mid-record: resyncs
    log.close()


def test_a_pickled_local_sink_is_a_fresh_unopened_one(tmp_path):
    import pickle

    from autolog.pipeline.records import RunInfo
    from autolog.sinks.local import LocalSink

    sink = LocalSink(fsync_secs=0.5)
    sink.open(RunInfo(id="r", name="r", project="p", path=str(tmp_path), config={}, meta={}))
    copy = pickle.loads(pickle.dumps(sink))
    assert copy.fsync_secs == 0.5 and copy.log is None
    sink.close(None)
    with __import__("pytest").raises(ValueError, match="fsync_secs"):
        LocalSink(fsync_secs=-1)


def test_every_record_written_reads_back_whatever_the_values(tmp_path):
    """Random batches mixing good and bad values: what append keeps is exactly what reads back,
    and the reader never meets a record it must skip."""
    import random

    rng = random.Random(7)
    steps = [0, 5, 2 ** 63 - 1, 2 ** 63, -1, True, 1.5, "3", np.int64(4), None]
    names = ["a", "b/c", "ünï", "", 3, None, ("t",)]
    values = [1.0, float("nan"), float("inf"), 2, np.float32(0.5), "x", None, 10 ** 400]
    log = EventLog(str(tmp_path), fsync_secs=0)
    kept = []
    for i in range(200):
        batch = Batch(
            scalars=[(rng.choice(names), rng.choice(steps), rng.choice(values), 0.0) for _ in range(rng.randint(0, 4))],
            histograms=[HistogramRecord(rng.choice(names), rng.choice(steps), [0.0, 1.0, 2.0][: rng.randint(0, 3)],
                                        [1.0, 2.0][: rng.randint(0, 2)], 0.0) for _ in range(rng.randint(0, 2))],
            media=[MediaRecord(rng.choice(["text", "graph", "image", 5]), rng.choice(names), rng.choice(steps), 0.0,
                               data=rng.choice(["t", None, 3, {"text": "g"}]), path=rng.choice([None, "media/x.png", 4]))
                   for _ in range(rng.randint(0, 2))],
            config=rng.choice([None, {"lr": 0.1}, {(1, 2): 3}, {"x": float("nan")}]),
            step=rng.choice(steps), prog_bar=tuple(rng.sample(["a", 3], rng.randint(0, 2))))
        try:
            end = log.append(batch)
        except Exception as exc:  # pragma: no cover - the assertion below names it
            raise AssertionError(f"append raised {exc!r} for batch {i}") from exc
        assert end is not None
        if batch:
            kept.append(batch)
    log.close()
    stats = fmt.ScanStats()
    read = [b for b, _ in read_batches(os.path.join(tmp_path, fmt.EVENTS_FILE), 0, stats)]
    assert stats.bad_records == 0 and stats.records == len(read)
    assert [[(n, s) for n, s, _v, _w in b.scalars] for b in read] == \
        [[(n, int(s)) for n, s, _v, _w in b.scalars] for b in kept if b.scalars or b.histograms or b.config
         or any(m.path is not None or m.kind not in ("image", "figure") for m in b.media)]
    assert log.dropped_values > 0 and log.errors == {}


def test_close_from_another_thread_while_appending(tmp_path):
    import threading

    log = EventLog(str(tmp_path), fsync_secs=0.01)
    ends: list = []
    started = threading.Event()

    def writer():
        for i in range(2000):
            ends.append(log.append(_batch(i)))
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait()
    log.close()  # appends after this return None; none raises, none is half written
    thread.join()
    written = [e for e in ends if e is not None]
    assert written == sorted(written) and ends[len(written):] == [None] * (len(ends) - len(written))
    stats = fmt.ScanStats()
    read = list(read_batches(os.path.join(tmp_path, fmt.EVENTS_FILE), 0, stats))
    assert len(read) == len(written) and stats.bad_records == 0 and not stats.torn_tail
    assert log.errors == {}


def test_appends_during_the_fsync_rest_do_not_fsync_again(tmp_path, monkeypatch):
    """At most one fsync per fsync_secs: writes made while the fsync thread rests do not wake
    it; they are fsynced when the rest ends (here: by close, on the closing thread)."""
    import threading

    from autolog.store import log as log_module

    synced = []  # (inode, thread name) of each fsync, in order
    first = threading.Event()  # the log file's first fsync is done
    real_fsync = os.fsync
    log = EventLog(str(tmp_path), fsync_secs=3600.0)
    inode = os.stat(log.path).st_ino

    def recording_fsync(fd):
        out = real_fsync(fd)
        synced.append((os.fstat(fd).st_ino, threading.current_thread().name))
        if synced[-1][0] == inode:
            first.set()
        return out

    monkeypatch.setattr(log_module.os, "fsync", recording_fsync)
    log.append(Batch(scalars=[("a", 0, 0.0, 0.0)]))
    assert first.wait(30)  # the first write is fsynced by the fsync thread; then it rests an hour
    for i in range(1, 50):
        log.append(Batch(scalars=[("a", i, float(i), 0.0)]))
    log.close()
    ours = [thread for ino, thread in synced if ino == inode]
    assert ours == ["autolog-fsync", threading.current_thread().name]  # none in between
