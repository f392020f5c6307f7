"""Local store throughput: scalar points written and read back per second.

    python -m benchmarks.store_throughput [--points 10000 100000 1000000] [--keys 100] [--json OUT]

Writes `points` scalar points through a real run (the LocalSink on its writer thread) in
batches the size a `log_every=50` run with `keys` metrics would hand off, then reads them back
with `autolog.read_run`. Reports points/s for the hand-off+write and for the read.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import autolog
from autolog.records import Batch
from autolog.sinks.local import LocalSink
from autolog.records import RunInfo, RunResult


def write_points(path: str, points: int, keys: int, batch_steps: int = 50) -> float:
    """Seconds for LocalSink to store `points` points (batches of `keys * batch_steps`)."""
    names = [f"metric/{k}" for k in range(keys)]
    per_batch = keys * batch_steps
    batches = []
    step = 0
    for start in range(0, points, per_batch):
        n = min(per_batch, points - start)
        batches.append(Batch(scalars=[(names[i % keys], step + i // keys, float(i), 1.0e9 + i) for i in range(n)]))
        step += batch_steps
    sink = LocalSink()
    os.makedirs(path, exist_ok=True)
    info = RunInfo(id="bench", name="bench", project="bench", path=path, config={}, meta={})
    t0 = time.perf_counter()
    sink.open(info)
    for b in batches:
        sink.write(b)
    sink.close(RunResult("finished", {}, {}, {}))
    return time.perf_counter() - t0


def end_to_end(root: str, points: int, keys: int) -> tuple[float, float, str]:
    """Seconds to log `points` through autolog.log in a real run, and to read them back."""
    names = [f"metric/{k}" for k in range(keys)]
    t0 = time.perf_counter()
    with autolog.run(project="bench", dir=root, sinks=["local"], log_every=50) as run:
        step = 0
        for i in range(0, points, keys):
            autolog.log({n: float(i + j) for j, n in enumerate(names)}, step=step)
            step += 1
            if step % 50 == 0:
                run.flush()
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = autolog.read_run(run.path)
    total = sum(len(v) for v in data.metrics.values())
    read = time.perf_counter() - t0
    assert total == points - points % keys or total == points, total
    return write, read, run.path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for points in args.points:
            sink_w, e2e_w, reads = [], [], []
            for r in range(args.repeats):
                path = os.path.join(root, f"sink-{points}-{r}")
                sink_w.append(write_points(path, points, args.keys))
                w, rd, _ = end_to_end(os.path.join(root, f"e2e-{points}-{r}"), points, args.keys)
                e2e_w.append(w)
                reads.append(rd)
            rows.append({"points": points, "sink_write_pts_per_s": points / statistics.median(sink_w),
                         "log_and_write_pts_per_s": points / statistics.median(e2e_w),
                         "read_pts_per_s": points / statistics.median(reads)})
    print("| points | LocalSink write (pts/s) | autolog.log → disk (pts/s) | read_run (pts/s) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['points']:,} | {r['sink_write_pts_per_s']:,.0f} | {r['log_and_write_pts_per_s']:,.0f} | {r['read_pts_per_s']:,.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return {"rows": rows}


if __name__ == "__main__":
    main()
