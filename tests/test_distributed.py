"""Real torch.distributed process groups (gloo, 2 processes on CPU): one run per job,
cross-rank reduction with one collective per reduction point, rank failures."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import autolog
from autolog.core.distributed import context

WORLD = 2
STEPS = 10
LOG_EVERY = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_collectives() -> dict:
    """Wrap the Python-level collectives so the test can count autolog's calls (DDP's own
    gradient all-reduce runs in C++ and is not counted)."""
    counts = {"n": 0}
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
                 "gather", "all_gather_object", "broadcast_object_list", "barrier", "reduce_scatter"):
        original = getattr(dist, name)

        def counted(*args, __original=original, **kwargs):
            counts["n"] += 1
            return __original(*args, **kwargs)

        setattr(dist, name, counted)
    return counts


def _worker(rank, root, port, fail_rank, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AUTOLOG_DIST_TIMEOUT="20")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    counts = _count_collectives()
    losses, grad_norms = [], []

    @autolog.track(project="ddp", dir=root, sinks=["local"], log_every=LOG_EVERY, sync_dist=True)
    def train(lr=0.1):
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        if hasattr(autolog, "watch"):
            autolog.watch(model, log="gradients", log_every=LOG_EVERY, histograms=False)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        for step in range(STEPS):
            x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            losses.append(loss.detach().clone())
            grad_norms.append({n.removeprefix("module."): p.grad.norm().item() for n, p in model.named_parameters()})
            opt.step()
            autolog.log({"val/rank_step": float(rank * 100 + step)}, sync_dist=True, reduce="max")
            autolog.log({"rank_only": float(rank)})  # not synced: rank 0's value only
            if rank == fail_rank and step == 6:
                raise RuntimeError(f"rank {rank} exploded")
        run = autolog.current_run()
        return {"id": run.id, "follower": run.is_follower}

    try:
        out = train()
        queue.put((rank, "ok", out, [float(v) for v in losses], grad_norms, counts["n"]))
    except RuntimeError as exc:
        queue.put((rank, "error", str(exc), None, None, counts["n"]))
        raise
    finally:
        if fail_rank is None:
            # Both ranks leave together (after the counts were taken): a rank whose peer has
            # already torn down the store can abort in gloo's shutdown.
            dist.barrier()
            dist.destroy_process_group()


def _spawn(tmp_path, fail_rank=None):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    error = None
    try:
        mp.spawn(_worker, args=(str(tmp_path), port, fail_rank, queue), nprocs=WORLD, join=True)
    except Exception as exc:  # a rank raised: mp.spawn ends the others and re-raises
        error = exc
    results = {}
    while not queue.empty():
        item = queue.get()
        results[item[0]] = item
    return results, error


def test_ddp_job_is_one_run_with_values_reduced_across_ranks(tmp_path):
    results, error = _spawn(tmp_path)
    assert error is None
    runs = autolog.list_runs(str(tmp_path))
    assert len(runs) == 1 and len(os.listdir(tmp_path / "ddp")) == 1  # exactly one run directory
    run = runs[0]
    assert run.status == "finished"
    assert {r[2]["id"] for r in results.values()} == {run.id}  # every rank agrees on the id
    assert results[1][2]["follower"] is True and results[0][2]["follower"] is False
    assert run.meta["world_size"] == 2 and run.meta["dist_backend"] == "gloo"
    # explicit sync_dist values: max over ranks, at their step
    assert run.metrics["val/rank_step"] == [(s + 1, 100.0 + s) for s in range(STEPS)]
    assert run.metrics["rank_only"] == [(s + 1, 0.0) for s in range(STEPS)]  # rank 0 only
    # the automatic loss with track(sync_dist=True): the mean of the per-rank losses
    per_rank = [results[r][3] for r in range(WORLD)]
    expected_loss = [(s, (per_rank[0][s] + per_rank[1][s]) / 2) for s in range(STEPS)]
    assert [s for s, _ in run.metrics["train/loss"]] == [s for s, _ in expected_loss]
    for (_, got), (_, want) in zip(run.metrics["train/loss"], expected_loss):
        assert got == pytest.approx(want, rel=1e-6)
    # gradient norms after DDP's all-reduce: the same on both ranks, names without "module."
    g0, g1 = results[0][4], results[1][4]
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):  # one dict per step (pytest 9's approx takes no nested structures)
        assert a == pytest.approx(b)
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        series = run.metrics[f"grad_norm/{name}"]
        assert [step for step, _ in series] == [0, LOG_EVERY]  # the watched steps
        for step, value in series:  # the gradient the optimizer saw at that step
            assert value == pytest.approx(g0[step][name], rel=1e-5)
    # collectives: one per reduction point (steps 5 and 10, and the end of the run for the
    # values logged after step 10's hand-off), never one per metric or per step
    assert results[0][5] == STEPS // LOG_EVERY + 1 and results[1][5] == STEPS // LOG_EVERY + 1


def test_a_rank_that_raises_ends_the_run_failed_with_its_exception(tmp_path):
    results, error = _spawn(tmp_path, fail_rank=1)
    assert error is not None
    [run] = autolog.list_runs(str(tmp_path))
    assert run.status == "failed"
    assert run.meta["exception_message"] == "rank 1 exploded"
    assert run.meta.get("failed_rank") == 1


def test_rank_context_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.initialized) == (3, 8, 1, False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert (context().rank, context().world_size) == (2, 4)


def test_ranks_other_than_zero_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with autolog.run(dir=str(tmp_path / "r"), sinks=["local"]) as run:
        autolog.log("a", 1.0)
        assert run.is_follower
    assert not (tmp_path / "r").exists()
