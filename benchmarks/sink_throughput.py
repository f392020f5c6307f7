"""Sink throughput: scalar points per second written by each sink, and read back.

    python -m benchmarks.sink_throughput [--points 10000 100000 1000000] [--keys 100]
                                         [--sinks local csv tensorboard wandb] [--json OUT]

The same points (`keys` metrics per step) are written:

- by each sink alone (``open``, ``write`` of batches the size a ``log_every=50`` run hands
  off, ``close``; the points are built beforehand and not timed), on this thread;
- end to end through ``autolog.log`` in a real run with the local sink (buffer, hand-offs,
  writer thread), until the run has finished;
- by TensorBoard's own ``SummaryWriter.add_scalar``, one call per point, then ``close``;

and read back: the local store by ``autolog.read_run(path).metrics``, TensorBoard's event file
by its ``EventAccumulator`` (every point kept). Each cell is the median of up to ``--repeats``
repetitions (fewer when one takes more than ``--budget`` seconds). The prepared points are
frozen out of the garbage collector's scans (`gc.freeze`) while they are written: a million
live tuples that belong to the benchmark would otherwise be scanned by every collection.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe, finish, machine, median, table

BATCH_STEPS = 50


def make_batches(points: int, keys: int) -> list[Any]:
    """`points` points of `keys` metrics per step, in `Batch`es of `BATCH_STEPS` steps."""
    from autolog.pipeline.records import Batch

    names = [f"metric/{k}" for k in range(keys)]
    per_batch = keys * BATCH_STEPS
    batches = []
    for start in range(0, points, per_batch):
        n = min(per_batch, points - start)
        scalars = [(names[i % keys], (start + i) // keys, float(start + i), 1.0e9 + (start + i) // keys)
                   for i in range(n)]
        batches.append(Batch(scalars=scalars, step=(start + n) // keys))
    return batches


def _run_info(path: str, mode: str | None = "offline") -> Any:
    from autolog.pipeline.records import RunInfo

    os.makedirs(path, exist_ok=True)
    return RunInfo(id=os.path.basename(path), name="bench", project="bench", path=path,
                   config={}, meta={}, mode=mode)


def _make_sink(name: str) -> Any:
    from autolog.sinks import resolve_sink

    return resolve_sink(name)


def sink_write(name: str, path: str, batches: list[Any]) -> float:
    """Seconds for the sink `name` to open, write `batches` and close."""
    from autolog.pipeline.records import RunResult

    sink = _make_sink(name)
    info = _run_info(path)
    t0 = time.perf_counter()
    sink.open(info)
    for batch in batches:
        sink.write(batch)
    sink.close(RunResult("finished", {}, {}, {}))
    return time.perf_counter() - t0


def local_read(path: str, expected: int) -> float:
    """Seconds for `read_run` to read the points a `LocalSink` wrote to `path`."""
    import autolog
    from autolog.store import format as store

    store.write_json_atomic(os.path.join(path, store.RUN_FILE),
                            {"format": store.FORMAT_VERSION, "id": os.path.basename(path),
                             "project": "bench", "status": "finished"})
    t0 = time.perf_counter()
    metrics = autolog.read_run(path).metrics
    seconds = time.perf_counter() - t0
    got = sum(len(v) for v in metrics.values())
    assert got == expected, (got, expected)
    return seconds


def log_rows(points: int, keys: int) -> list[dict[str, float]]:
    """The same points as one `autolog.log` dict per step."""
    names = [f"metric/{k}" for k in range(keys)]
    return [{n: float(s * keys + j) for j, n in enumerate(names)} for s in range(points // keys)]


def log_end_to_end(root: str, rows: list[dict[str, float]], keys: int) -> float:
    """Seconds to log `rows` through `autolog.log` in a run (local sink) until it finished."""
    import autolog

    t0 = time.perf_counter()
    with autolog.run(project="bench", dir=root, sinks=["local"], log_every=BATCH_STEPS, capture=False) as run:
        for step, row in enumerate(rows):
            autolog.log(row, step=step)
    seconds = time.perf_counter() - t0
    got = sum(len(v) for v in autolog.read_run(run.path).metrics.values())
    assert got == len(rows) * keys, (got, len(rows) * keys)
    return seconds


def summary_writer(path: str, batches: list[Any]) -> float:
    """Seconds for TensorBoard's `SummaryWriter.add_scalar` to write the points, and close."""
    from torch.utils.tensorboard import SummaryWriter

    points = [p for b in batches for p in b.scalars]
    t0 = time.perf_counter()
    writer = SummaryWriter(path)
    for name, step, value, wall in points:
        writer.add_scalar(name, value, step, walltime=wall)
    writer.close()
    return time.perf_counter() - t0


def tensorboard_read(path: str, expected: int) -> float:
    """Seconds for TensorBoard's `EventAccumulator` to load every scalar under `path`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t0 = time.perf_counter()
    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    got = sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])
    seconds = time.perf_counter() - t0
    assert got == expected, (got, expected)
    return seconds


def repeat(fn: Callable[[int], float], repeats: int, budget: float) -> tuple[float, int]:
    """(median seconds, calls) of up to `repeats` calls `fn(i)`; fewer once `budget` s are spent."""
    times: list[float] = []
    started = time.perf_counter()
    for i in range(repeats):
        times.append(fn(i))
        if time.perf_counter() - started > budget:
            break
    return median(times), len(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--keys", type=int, default=100, help="metrics per step (default %(default)s)")
    parser.add_argument("--sinks", nargs="+", default=["local", "csv", "tensorboard", "wandb"])
    parser.add_argument("--no-reference", action="store_true", help="skip TensorBoard's SummaryWriter")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per cell before it stops repeating")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autolog-sinks-", ignore_cleanup_errors=True) as root:
        for points in args.points:
            batches = make_batches(points, args.keys)
            rows_to_log = log_rows(points, args.keys)
            n = sum(len(b.scalars) for b in batches)
            gc.collect()
            gc.freeze()  # the prepared points are the benchmark's, not the sink's: never scanned
            row: dict[str, Any] = {"points": n}

            def where(kind: str, i: int) -> str:
                return os.path.join(root, f"{kind}-{points}-{i}")

            for name in args.sinks:
                seconds, written = repeat(lambda i, name=name: sink_write(name, where(name, i), batches),
                                          args.repeats, args.budget)
                row[f"{name}_write"] = n / seconds
                if name == "local":
                    seconds, _ = repeat(lambda i: local_read(where("local", i % written), n),
                                        args.repeats, args.budget)
                    row["local_read"] = n / seconds
            if "local" in args.sinks:
                seconds, _ = repeat(lambda i: log_end_to_end(where("e2e", i), rows_to_log, args.keys),
                                    args.repeats, args.budget)
                row["log_to_local"] = len(rows_to_log) * args.keys / seconds
            if not args.no_reference:
                seconds, written = repeat(lambda i: summary_writer(where("sw", i), batches),
                                          args.repeats, args.budget)
                row["summarywriter_write"] = n / seconds
                seconds, _ = repeat(lambda i: tensorboard_read(where("sw", i % written), n),
                                    args.repeats, args.budget)
                row["summarywriter_read"] = n / seconds
            del batches, rows_to_log
            gc.unfreeze()
            rows.append(row)
            print(f"{n:,} points done", file=sys.stderr, flush=True)

    columns = [("local_write", "LocalSink write"), ("log_to_local", "autolog.log → local, run finished"),
               ("local_read", "read_run"), ("csv_write", "CSVSink write"),
               ("tensorboard_write", "TensorBoardSink write"), ("wandb_write", "WandbSink write (offline)"),
               ("summarywriter_write", "SummaryWriter.add_scalar"),
               ("summarywriter_read", "TensorBoard EventAccumulator read")]
    columns = [(k, label) for k, label in columns if any(k in r for r in rows)]
    info = machine()
    print(f"Scalar points per second ({describe(info)}; {args.keys} metrics per step, "
          f"batches of {BATCH_STEPS} steps):\n")
    print(table(["points"] + [label for _k, label in columns],
                [[f"{r['points']:,}"] + [f"{r[k]:,.0f}" if k in r else "—" for k, _l in columns] for r in rows]))
    results = {"machine": info, "keys": args.keys, "batch_steps": BATCH_STEPS, "rows": rows,
               "seconds": round(time.time() - started, 1)}
    print(f"\n({results['seconds']} s)")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
