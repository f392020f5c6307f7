"""``python -m benchmarks.overhead --dist fsdp``: per-step cost of ``watch(log="all")`` under FSDP2.

Two CPU ranks (gloo on loopback, spawned here), an MLP sharded with ``fully_shard`` per layer and
at the root. Configurations: ``fsdp2`` (plain FSDP2, no autolog) and ``fsdp2+watch-all``
(``autolog.run(sinks=["local"], log_every=W)`` and ``watch(model, log="all")``: statistics of the
full parameters at one step per W, two packed all_reduces at the hand-off). Windows are
interleaved: each round trains one fresh model and alternates W-step windows of the two
configurations, in a random (seeded, the same on both ranks) order per pair (`_round`). A
configuration's time per step in a round is the median of its windows; the overhead is against
``fsdp2`` in the same round, the table gives the median over rounds with the range. Rank 0's
clock.
"""
from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from benchmarks.common import describe, finish, machine, median, table

WORLD = 2
LAYERS = (256, 512, 512, 10)
BATCH = 64
CONFIGS = ("fsdp2", "fsdp2+watch-all")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(LAYERS, LAYERS[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(LAYERS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _round(steps: int, window: int, tmp: str, order: random.Random) -> dict[str, list[float]]:
    """One round: a fresh model, W warm-up steps, then `N / W` pairs of timed windows of W steps,
    one per configuration in a random order per pair (interleaved windows, the same model
    training on). A ``fsdp2+watch-all`` window opens a run and watches the model before it
    (untimed), so it holds one watched step and the hand-off that reduces it, and closes the
    run after it (untimed): a watched window also pays a new watch's first-step setup (its
    parameter list and names), so the overhead is an upper bound. Each window ends with a
    barrier so both ranks' time is in it."""
    import autolog

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randn(BATCH, LAYERS[0], generator=gen), torch.randint(0, LAYERS[-1], (BATCH,), generator=gen)

    def train(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    train(window)  # warm-up
    out: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for _ in range(max(1, steps // window)):
        configs = list(CONFIGS)
        order.shuffle(configs)
        for config in configs:
            run = None
            if config == "fsdp2+watch-all":
                run = autolog.run(project="bench", dir=tmp, sinks=["local"], log_every=window)
                run.__enter__()
                autolog.watch(model, log="all")
            dist.barrier()
            start = time.perf_counter()
            train(window)
            dist.barrier()
            out[config].append((time.perf_counter() - start) / window)
            if run is not None:
                run.__exit__(None, None, None)
    return out


def _worker(rank: int, port: int, steps: int, rounds: int, window: int, threads: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    order = random.Random(0)  # the same on both ranks
    samples: dict[str, list[float]] = {c: [] for c in CONFIGS}
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            windows = _round(steps, window, tmp, order)
            per_step = {c: median(windows[c]) for c in CONFIGS}
            for c in CONFIGS:
                samples[c].append(per_step[c])
            overheads.append(per_step["fsdp2+watch-all"] - per_step["fsdp2"])
    if rank == 0:
        queue.put({"samples": samples, "overheads": overheads})
    dist.barrier()
    dist.destroy_process_group()


def main(args: Any) -> dict[str, Any]:
    steps = args.steps or 400
    window = args.window
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    started = time.time()
    mp.spawn(_worker, args=(_free_port(), steps, args.rounds, window, args.threads, queue), nprocs=WORLD)
    got = queue.get()
    plain = median(got["samples"]["fsdp2"])
    over = got["overheads"]
    rows = [{"config": c, "step_us": median(got["samples"][c]) * 1e6} for c in CONFIGS]
    rows[1].update(added_us=median(over) * 1e6, added_min_us=min(over) * 1e6, added_max_us=max(over) * 1e6,
                   overhead_pct=100 * median(over) / plain if plain else float("nan"))
    results = {"machine": machine("cpu"), "dist": "fsdp", "world_size": WORLD, "layers": list(LAYERS),
               "batch": BATCH, "settings": {"rounds": args.rounds, "window": window, "steps": steps,
                                            "log_every": window, "threads": args.threads},
               "rows": rows, "seconds": round(time.time() - started, 1)}
    print(f"Overhead per training step under FSDP2, {WORLD} CPU ranks (gloo) "
          f"({describe(results['machine'])}; {args.rounds} rounds; MLP {'-'.join(map(str, LAYERS))}, "
          f"batch {BATCH}; watch every {window} steps = log_every):\n")
    body = [[rows[0]["config"], f"{rows[0]['step_us']:.0f}", "—"],
            [rows[1]["config"], f"{rows[1]['step_us']:.0f}",
             f"+{rows[1]['added_us']:.0f} µs ({rows[1]['overhead_pct']:+.1f}%; "
             f"range {rows[1]['added_min_us']:+.0f} to {rows[1]['added_max_us']:+.0f})"]]
    print(table(["configuration", "µs/step", "overhead vs fsdp2"], body))
    print(f"\n({results['seconds']} s)")
    return finish(results, args.json)
