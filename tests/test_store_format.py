"""events.alog framing against damaged files: flipped bytes, lying headers, torn tails, v1."""
from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest

import autolog
from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord
from autolog.store import files
from autolog.store import format as fmt
from autolog.store.log import EventLog, read_batches


def _batch(i: int) -> Batch:
    return Batch(scalars=[("train/loss", i, 1.0 / (i + 1), 10.0 + i), ("lr", i, 0.1, 10.0 + i)],
                 histograms=[HistogramRecord("w", i, [0.0, 1.0, 2.0], [1.0, float(i)], 10.0 + i)],
                 media=[MediaRecord("text", "t", i, 10.0 + i, data=f"s{i}")], step=i)


def _run_dir(tmp_path, n: int = 8) -> tuple[str, list[int]]:
    """A real run directory: run.json and a log of `n` batches; the end offset of each."""
    run = tmp_path / "proj" / "run1"
    run.mkdir(parents=True)
    files.write_json_atomic(str(run / files.RUN_FILE), {"format": 2, "id": "run1", "project": "proj",
                                                         "status": "finished"})
    log = EventLog(str(run), fsync_secs=0)
    ends = [log.append(_batch(i)) for i in range(n)]
    log.close()
    return str(run), ends


def _steps(run_dir: str) -> list[int]:
    return [s for s, _ in autolog.read_run(run_dir).metrics.get("train/loss", [])]


def _events(run_dir: str) -> str:
    return os.path.join(run_dir, fmt.EVENTS_FILE)


def _rewrite(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def test_everything_reads_back_through_read_run(tmp_path):
    run, _ = _run_dir(tmp_path)
    data = autolog.read_run(run)
    assert _steps(run) == list(range(8))
    assert data.metrics["lr"] == [(i, 0.1) for i in range(8)]
    assert data.histograms["w"][3] == (3, [0.0, 1.0, 2.0], [1.0, 3.0])
    assert [m["text"] for m in data.media] == [f"s{i}" for i in range(8)]
    with open(_events(run), "rb") as fh:
        assert fh.read(8) == fmt.MAGIC


def test_one_flipped_byte_hides_only_its_own_record(tmp_path):
    run, ends = _run_dir(tmp_path)
    with open(_events(run), "rb") as fh:
        clean = fh.read()
    starts = [len(fmt.MAGIC)] + ends[:-1]
    for k in range(len(ends)):  # a byte in every part of record k: sync, seq, length, crcs, payload
        for offset in sorted({0, 4, 12, 16, 20, 24, 30, ends[k] - starts[k] - 1}):
            data = bytearray(clean)
            data[starts[k] + offset] ^= 0x40
            _rewrite(_events(run), bytes(data))
            assert _steps(run) == [i for i in range(8) if i != k], (k, offset)
            stats = autolog.read_run(run).log_stats
            # the last record damaged looks like one still being written: a torn tail
            assert stats.records == 7 and stats.missing == (k != 7) and stats.torn_tail == (k == 7)


def test_flipping_every_byte_of_a_small_log_costs_at_most_one_record(tmp_path):
    run, ends = _run_dir(tmp_path, n=3)
    with open(_events(run), "rb") as fh:
        clean = fh.read()
    starts = [len(fmt.MAGIC)] + ends[:-1]
    for pos in range(len(clean)):
        data = bytearray(clean)
        data[pos] ^= 0xFF
        _rewrite(_events(run), bytes(data))
        hit = next((k for k in range(3) if starts[k] <= pos < ends[k]), None)  # None: the file header
        assert _steps(run) == [i for i in range(3) if i != hit], pos


def test_truncated_at_every_offset_every_complete_record_reads_back(tmp_path):
    run, ends = _run_dir(tmp_path, n=4)
    with open(_events(run), "rb") as fh:
        clean = fh.read()
    for cut in range(len(clean) + 1):
        _rewrite(_events(run), clean[:cut])
        complete = sum(end <= cut for end in ends)
        assert _steps(run) == list(range(complete)), cut
        stats = fmt.ScanStats()
        got = list(read_batches(_events(run), 0, stats))
        assert len(got) == complete and stats.torn_tail == (cut not in [8] + ends and cut > 8)


def test_a_later_append_continues_after_a_torn_tail(tmp_path):
    run, ends = _run_dir(tmp_path, n=4)
    with open(_events(run), "rb") as fh:
        clean = fh.read()
    _rewrite(_events(run), clean[:ends[2] + 30])  # record 3 cut short, as by kill -9 mid-write
    log = EventLog(run, fsync_secs=0)
    log.append(_batch(10))
    log.append(_batch(11))
    log.close()
    assert _steps(run) == [0, 1, 2, 10, 11]
    stats = fmt.ScanStats()
    records = list(fmt.iter_records(open(_events(run), "rb").read(), 0, stats))
    assert [r.seq for r, _ in records] == [0, 1, 2, 3, 4]  # the sequence goes on after the last complete one
    assert stats.bad_records == 1 and not stats.torn_tail


def _lying(payload_header: dict, body: bytes = b"", kind: bytes = b"B") -> bytes:
    head = json.dumps(payload_header).encode()
    return kind + struct.pack("<I", len(head)) + head + body


LIARS = {
    "count beyond the payload": _lying({"n": 10 ** 6, "keys": ["a"]}, b"\0" * 28),
    "key index beyond the names": _lying({"n": 1, "keys": ["a"]}, struct.pack("<Iqdd", 5, 1, 1.0, 1.0)),
    "keys not strings": _lying({"n": 1, "keys": [3]}, struct.pack("<Iqdd", 0, 1, 1.0, 1.0)),
    "n negative": _lying({"n": -1, "keys": []}),
    "n a string": _lying({"n": "1", "keys": ["a"]}, struct.pack("<Iqdd", 0, 1, 1.0, 1.0)),
    "bins beyond the payload": _lying({"hist": [{"name": "h", "step": 1, "wall": 0.0, "bins": 1000}]}, b"\0" * 24),
    "histogram without a name": _lying({"hist": [{"step": 1, "bins": 1}]}, b"\0" * 24),
    "histograms not a list": _lying({"hist": {"a": 1}}),
    "media not objects": _lying({"media": [1, 2]}),
    "media without a kind": _lying({"media": [{"name": "x"}]}),
    "media step a string": _lying({"media": [{"kind": "text", "name": "x", "step": "3"}]}),
    "extra bytes": _lying({"n": 0, "keys": []}, b"\0" * 5),
    "header length beyond the payload": b"B" + struct.pack("<I", 999) + b"{}",
    "header not JSON": b"B" + struct.pack("<I", 3) + b"{{{",
    "header not an object": _lying([1, 2]),  # type: ignore[arg-type]
    "deeply nested header": b"B" + struct.pack("<I", 200000) + b"[" * 100000 + b"]" * 100000,
    "unknown kind": _lying({}, kind=b"Z"),
    "config not an object": _lying({"config": [1]}),
    "step negative": _lying({"step": -3, "n": 0, "keys": []}),
    "too short": b"B\0",
    "v1 kind with a bad count": _lying({"n": 2, "keys": ["a"]}, b"\0" * 28, kind=b"S"),
}


@pytest.mark.parametrize("what", sorted(LIARS))
def test_a_record_with_a_valid_checksum_but_a_lying_header_is_skipped(tmp_path, what):
    run, ends = _run_dir(tmp_path, n=3)
    with open(_events(run), "rb") as fh:
        clean = fh.read()
    _rewrite(_events(run), clean[:ends[0]] + fmt.encode_frame(99, LIARS[what]) + clean[ends[0]:])
    assert _steps(run) == [0, 1, 2]
    stats = fmt.ScanStats()
    assert len(list(read_batches(_events(run), 0, stats))) == 3 and stats.bad_records == 1


def _v1_file(points: list[tuple[str, int, float, float]]) -> bytes:
    names = list(dict.fromkeys(p[0] for p in points))
    head = json.dumps({"keys": names, "n": len(points)}).encode()
    arrays = (np.asarray([names.index(p[0]) for p in points], "<u4").tobytes()
              + np.asarray([p[1] for p in points], "<i8").tobytes()
              + np.asarray([p[2] for p in points], "<f8").tobytes()
              + np.asarray([p[3] for p in points], "<f8").tobytes())
    payload = b"S" + struct.pack("<I", len(head)) + head + arrays
    media = json.dumps({"items": [{"kind": "text", "name": "t", "step": 1, "wall": 0.0, "path": None,
                                   "text": "hi"}]}).encode()
    media_payload = b"M" + struct.pack("<I", len(media)) + media
    return b"".join([fmt.MAGIC_V1] + [struct.pack("<II", len(p), zlib.crc32(p)) + p
                                      for p in (payload, media_payload)])


def test_version_1_logs_still_read_and_are_never_appended_to(tmp_path, capsys):
    run, _ = _run_dir(tmp_path, n=1)
    v1 = _v1_file([("train/loss", s, 0.5 * s, 1.0) for s in range(5)])
    _rewrite(_events(run), v1)
    data = autolog.read_run(run)
    assert data.metrics["train/loss"] == [(s, 0.5 * s) for s in range(5)]
    assert data.media[0]["text"] == "hi"
    batches = list(read_batches(_events(run)))  # a follower reads v1 records as batches too
    assert [len(b.scalars) for b, _ in batches] == [5, 0] and batches[1][0].media[0].data == "hi"
    assert [b.step for b, _ in read_batches(_events(run), batches[0][1])] == [0]  # from an offset
    log = EventLog(run)
    assert log.append(_batch(1)) is None and "version-1" in log.errors["first_error"]
    log.close()
    assert open(_events(run), "rb").read() == v1
    _rewrite(_events(run), v1[:-3])  # a torn v1 tail: the scalars before it still read
    assert len(autolog.read_run(run).metrics["train/loss"]) == 5
