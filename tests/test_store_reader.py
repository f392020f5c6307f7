"""read_run and list_runs against damaged run directories, and while a run is writing."""
from __future__ import annotations

import os
import random

import pytest

import autolog
from autolog.pipeline.records import Batch
from autolog.store import files
from autolog.store import format as fmt
from autolog.store.log import EventLog, read_batches
from tests.helpers import child, wait_line


def _make_run(root, name: str, n: int = 20, record: dict | None = None) -> str:
    run = os.path.join(root, "proj", name)
    os.makedirs(run)
    files.write_json_atomic(os.path.join(run, files.RUN_FILE), record or {
        "format": 2, "id": name, "project": "proj", "status": "finished", "meta": {"start_timestamp": 1.0}})
    log = EventLog(run, fsync_secs=0)
    for i in range(n):
        log.append(Batch(scalars=[("loss", i, float(i), 0.0), ("acc", i, 0.5, 0.0)], step=i))
    log.close()
    return run


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"run"', "null", '{"id": 3, "project": "p"}',
                                  '{"id": "r"}', '{"id": "r", "project": "p", "config": [1]}',
                                  '{"id": "r", "project": "p", "tags": "a"}',
                                  '{"id": "r", "project": "p", "status": 1}', "\udcff"])
def test_a_damaged_run_json_is_a_clear_error_for_read_run_and_skipped_by_list_runs(tmp_path, text):
    good = _make_run(tmp_path, "good")
    bad = _make_run(tmp_path, "bad")
    with open(os.path.join(bad, files.RUN_FILE), "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(text)
    with pytest.raises(ValueError, match="run.json"):
        autolog.read_run(bad)
    assert [r.path for r in autolog.list_runs(str(tmp_path))] == [good]


def test_list_runs_tolerates_odd_meta(tmp_path):
    for i, start in enumerate(["x", None, float("nan"), 5.0]):
        _make_run(tmp_path, f"r{i}", record={"id": f"r{i}", "project": "proj", "meta": {"start_timestamp": start}})
    assert [r.id for r in autolog.list_runs(str(tmp_path))][0] == "r3"


def test_random_damage_never_raises_and_spares_every_untouched_record(tmp_path):
    run = _make_run(tmp_path, "r", n=20)
    path = os.path.join(run, fmt.EVENTS_FILE)
    with open(path, "rb") as fh:
        clean = fh.read()
    ends = [end for _, end in fmt.iter_records(clean)]
    starts = [len(fmt.MAGIC)] + ends[:-1]
    rng = random.Random(1234)
    for _trial in range(300):
        data = bytearray(clean)
        hits = [rng.randrange(len(data)) for _ in range(rng.randint(1, 6))]
        for pos in hits:
            data[pos] = rng.randrange(256)
        cut = rng.choice([len(data), rng.randrange(len(data) + 1)])
        with open(path, "wb") as fh:
            fh.write(bytes(data[:cut]))
        untouched = {k for k in range(20) if ends[k] <= cut and not any(starts[k] <= p < ends[k] for p in hits)}
        got = dict(autolog.read_run(run).metrics.get("loss", []))
        assert untouched <= set(got) <= set(range(20))
        assert all(got[k] == float(k) for k in got)  # nothing damaged is passed off as data
        whole = fmt.ScanStats()
        expected = [(b.step, end) for b, end in read_batches(path, 0, whole)]
        for chunk in (40, 97, 500):  # a follower reading the file in pieces sees the same
            pieces = fmt.ScanStats()
            assert [(b.step, end) for b, end in read_batches(path, 0, pieces, chunk=chunk)] == expected
            assert (pieces.records, pieces.bad_records, pieces.missing, pieces.torn_tail, pieces.end) == \
                (whole.records, whole.bad_records, whole.missing, whole.torn_tail, whole.end)


def test_read_run_while_the_run_is_writing(tmp_path):
    proc = child(f"""
        import sys, autolog
        with autolog.run(dir={str(tmp_path)!r}, project="live", sinks=["local"]) as run:
            step = 0
            for line in sys.stdin:
                if line.strip() == "race":
                    break
                for _ in range(50):
                    autolog.log({{"loss": float(step)}}, step=step)
                    step += 1
                run.flush(wait=True)
                print("flushed", flush=True)
            for _ in range(400):  # now hand-offs as fast as it can while the parent reads
                for _ in range(50):
                    autolog.log({{"loss": float(step)}}, step=step)
                    step += 1
                run.flush()
        print("done", flush=True)
    """, cwd=str(tmp_path))
    try:
        seen = []
        for _ in range(10):
            proc.stdin.write("more\n")
            proc.stdin.flush()
            wait_line(proc, "flushed")
            [run] = autolog.list_runs(str(tmp_path))
            assert run.status == "running"
            steps = [s for s, _ in run.metrics["loss"]]
            assert steps == list(range(len(steps)))  # a prefix of what was written, in order
            seen.append(len(steps))
        assert seen == [50 * (i + 1) for i in range(10)]  # every flushed hand-off is readable
        proc.stdin.write("race\n")
        proc.stdin.flush()
        while True:  # read concurrently with the writer, as often as possible, until it ends
            running = proc.poll() is None
            steps = [s for s, _ in autolog.read_run(run.path).metrics["loss"]]
            assert steps == list(range(len(steps))) and len(steps) >= seen[-1]
            seen.append(len(steps))
            if not running:
                break
        assert seen == sorted(seen)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    final = autolog.read_run(run.path)
    assert final.status == "finished" and len(final.metrics["loss"]) == 500 + 400 * 50
