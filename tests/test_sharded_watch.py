"""`watch` under sharded training with real process groups (gloo on CPU, 2 and 4 processes):
FSDP2 (``fully_shard``), HSDP (2-D mesh replicate x shard) and DTensor tensor parallel
(``parallelize_module``, colwise/rowwise). autolog's recorded values are compared with
references each rank computes itself in the same run from the full tensors; autolog's
collectives are counted; training is bit-identical with and without autolog."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import autolog
from autolog.core.distributed import DistributedMismatchError

STEPS = 6
LOG_EVERY = 3
WATCHED = [0, 3]  # the watched steps (every LOG_EVERY-th, from 0)
REDUCTION_POINTS = STEPS // LOG_EVERY + 1  # the hand-offs at steps 3 and 6, and the run's end
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce",
               "gather", "all_gather_object", "broadcast_object_list", "barrier", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_autolog_collectives() -> list:
    """Wrap torch.distributed's collectives (a fake only for counting): the calls made from
    autolog's modules, with the run step at the call (FSDP's own collectives are not counted)."""
    calls = []
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("autolog"):
                run = autolog.current_run()
                calls.append((__name, run.step if run is not None else "end"))  # "end": the run's end
            return __original(*args, **kwargs)

        setattr(dist, name, counted)
    return calls


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    # FSDP: odd sizes, shards of unequal length (7 rows over 2 or 4 ranks); tensor parallel
    # (colwise 0, rowwise 2) needs the hidden size to divide evenly
    hidden = 8 if kind == "tp" else 7
    return nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 6), nn.Tanh(), nn.Linear(6, 4))


def _shard(kind: str, model: nn.Module, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh

    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif kind == "hsdp":
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif kind in ("fsdp1", "fsdp1_orig"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        cpu, orig = torch.device("cpu"), kind == "fsdp1_orig"
        model[0] = FSDP(model[0], device_id=cpu, use_orig_params=orig)
        model[2] = FSDP(model[2], device_id=cpu, use_orig_params=orig)
        model = FSDP(model, device_id=cpu, use_orig_params=orig)
    elif kind == "fsdp1_hybrid":  # HYBRID_SHARD on a 2 x 2 mesh (replicate x shard)
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy

        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        model = FSDP(model, device_id=torch.device("cpu"), device_mesh=mesh,
                     sharding_strategy=ShardingStrategy.HYBRID_SHARD)
    elif kind == "tp":
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = init_device_mesh("cpu", (world,))
        from torch.distributed.tensor import Replicate

        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel(),
                                         "4": ColwiseParallel(output_layouts=Replicate())})
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _clean(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "")


def _fsdp1_full(model: nn.Module, grads: bool) -> dict:
    """FSDP1 references: each original parameter (or its gradient) in full; without
    use_orig_params from the flat parameters' shards gathered by the test and split as FSDP1
    lays them out (no padding between parameters), with it by FSDP's summon_full_params."""
    out = {}
    if any(getattr(getattr(m, "_handle", None), "_use_orig_params", False) for m in model.modules()):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, with_grads=grads):
            return {_clean(n): (p.grad if grads else p).detach().clone() for n, p in model.named_parameters()}
    for prefix, module in model.named_modules():
        handle = getattr(module, "_handle", None)
        if type(module).__name__ != "FullyShardedDataParallel" or handle is None:
            continue
        fp = handle.flat_param
        shard = (fp.grad if grads else fp).detach()
        group = module.process_group  # the shard group (HYBRID_SHARD: within a replica)
        gathered = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, shard.contiguous(), group=group)
        flat = torch.cat(gathered)
        base = _clean(prefix + ".") if prefix else ""
        at = 0
        for fqn, numel, shape in zip(fp._fqns, fp._numels, fp._shapes):
            out[base + fqn] = flat[at:at + numel].reshape(shape).clone()
            at += numel
    return out


def _hist(x: torch.Tensor) -> tuple[list, float, float]:
    """The reference histogram of a full tensor: 64 bins over its finite range."""
    x = x.detach().reshape(-1).float()
    finite = x[torch.isfinite(x)]
    low, high = finite.min(), finite.max()
    span = high - low if high > low else torch.tensor(1.0)
    counts = torch.histc((x - low) / span, 64, 0.0, 1.0)
    return counts.tolist(), float(low), float(high)


def _backward(model, opt, gen) -> torch.Tensor:
    """One batch's forward and backward (before the optimizer step); returns the loss."""
    x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 4, generator=gen)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    return loss


def _train(kind, rank, world, root, refs):
    """STEPS steps of training; with `root`, inside an autolog run watching the model, and with
    the reference statistics of the watched steps collected in `refs`."""
    model = _shard(kind, _model(kind), world)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # data: each rank its own batch (FSDP, HSDP); the same on every rank (tensor parallel)
    gen = torch.Generator().manual_seed(100 + (0 if kind == "tp" else rank))
    losses, clip_norms = [], []

    def loop():
        if root is not None:
            autolog.watch(model, log="all", log_every=LOG_EVERY, histograms=True)
        for step in range(STEPS):
            loss = _backward(model, opt, gen)
            if kind.startswith("fsdp1"):  # FSDP1's own: the norm over every rank's shards
                norm = model.clip_grad_norm_(1e9)
            else:  # a DTensor under FSDP2 and tensor parallel
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
            clip_norms.append(float(_full(norm)))
            if step in WATCHED and refs is not None:
                if kind.startswith("fsdp1"):
                    full_grads = _fsdp1_full(model, grads=True)
                    names, grads = list(full_grads), list(full_grads.values())
                    before = list(_fsdp1_full(model, grads=False).values())
                else:
                    names = [n for n, _p in model.named_parameters()]
                    grads = [_full(p.grad) for p in model.parameters()]
                    before = [_full(p.detach()).clone() for p in model.parameters()]
                refs[step] = {
                    "grad_norm": {n: float(g.norm()) for n, g in zip(names, grads)},
                    "total": float(torch.nn.utils.get_total_norm(grads)),
                    "weight_norm": {n: float(w.norm()) for n, w in zip(names, before)},
                    "gradients": {n: _hist(g) for n, g in zip(names, grads)},
                    "parameters": {n: _hist(w) for n, w in zip(names, before)},
                }
            opt.step()
            if step in WATCHED and refs is not None:
                if kind.startswith("fsdp1"):
                    after = list(_fsdp1_full(model, grads=False).values())
                else:
                    after = [_full(p.detach()) for p in model.parameters()]
                refs[step]["update_ratio"] = {n: float((a - b).norm() / b.norm())
                                              for n, a, b in zip(names, after, before)}
            losses.append(float(_full(loss.detach())))

    if root is None:
        loop()
    else:
        # sync_dist: the loss (the mean over ranks) travels in the same two collectives
        with autolog.run(project=kind, dir=root, sinks=["local"], log_every=LOG_EVERY, sync_dist=True):
            loop()
    final = [_full(p.detach()).clone() for p in model.parameters()]  # FSDP1: the local shards
    return losses, clip_norms, final


def _worker(rank, world, kind, root, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AUTOLOG_DIST_TIMEOUT="20")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        calls = _count_autolog_collectives()
        refs = {}
        losses, clips, final = _train(kind, rank, world, root, refs)
        plain_losses, plain_clips, plain_final = _train(kind, rank, world, None, None)
        identical = (losses == plain_losses and clips == plain_clips
                     and all(torch.equal(a, b) for a, b in zip(final, plain_final)))
        queue.put((rank, refs if rank == 0 else None, calls, identical, clips, losses))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _spawn(tmp_path, kind, world):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(world, kind, str(tmp_path), _free_port(), queue), nprocs=world, join=True)
    results = {}
    while not queue.empty():
        item = queue.get()
        results[item[0]] = item
    return results


NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


@pytest.mark.parametrize("kind,world", [("fsdp2", 2), ("hsdp", 4), ("tp", 2), ("fsdp1", 2), ("fsdp1_orig", 2),
                                        ("fsdp1_hybrid", 4)])
def test_watch_records_the_full_parameters_statistics(tmp_path, kind, world):
    results = _spawn(tmp_path, kind, world)
    assert sorted(results) == list(range(world))
    [run] = autolog.list_runs(str(tmp_path))
    assert run.status == "finished"
    refs = results[0][1]
    assert sorted(refs) == WATCHED
    for step in WATCHED:
        ref = refs[step]
        assert sorted(ref["grad_norm"]) == sorted(NAMES)  # the user's names
        for name in NAMES:
            for family in ("grad_norm", "weight_norm", "update_ratio"):
                got = dict(run.metrics[f"{family}/{name}"])[step]
                assert got == pytest.approx(ref[family][name], rel=1e-5), (family, name, step)
            for family in ("gradients", "parameters"):
                series = {s: (edges, counts) for s, edges, counts in run.histograms[f"{family}/{name}"]}
                edges, counts = series[step]
                want_counts, low, high = ref[family][name]
                assert edges[0] == pytest.approx(low, rel=1e-6, abs=1e-12)
                assert edges[-1] == pytest.approx(high, rel=1e-6, abs=1e-12)
                assert counts == want_counts, (family, name, step)
        assert dict(run.metrics["grad_norm/total"])[step] == pytest.approx(ref["total"], rel=1e-5)
    # train/grad_norm: the full norm clip_grad_norm_ returned (a DTensor under FSDP2)
    clips = results[0][4]
    assert [s for s, _v in run.metrics["train/grad_norm"]] == list(range(STEPS))
    for (_s, got), want in zip(run.metrics["train/grad_norm"], clips):
        assert got == pytest.approx(want, rel=1e-5)
    # train/loss with sync_dist: the mean of every rank's loss
    for step, got in run.metrics["train/loss"]:
        assert got == pytest.approx(sum(results[r][5][step] for r in range(world)) / world, rel=1e-6)
    assert [s for s, _v in run.metrics["train/loss"]] == list(range(STEPS))
    for rank in range(world):
        _r, _refs, calls, identical, _clips, _losses = results[rank]
        assert identical, f"rank {rank}: training differs with autolog"
        # two packed collectives per reduction point, at the hand-offs only (never in a hook)
        assert [name for name, _s in calls] == ["all_reduce", "all_reduce"] * REDUCTION_POINTS
        assert [s for _n, s in calls] == [3, 3, 6, 6, "end", "end"]
    # rank 0 alone wrote: one run directory
    assert len(os.listdir(tmp_path / kind)) == 1


def _fault_worker(rank, world, fault, root, port, queue):
    """FSDP2, 2 ranks. fault="nan": rank 1 puts a NaN in its shard of 2.weight's gradient at
    step 4. fault="die": rank 1 leaves at its last step, before the reduction point."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AUTOLOG_DIST_TIMEOUT="3")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _shard("fsdp2", _model("fsdp2"), world)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    outcome = "ok"
    try:
        with autolog.run(project="fault", dir=root, sinks=["local"], log_every=LOG_EVERY):
            autolog.watch(model, log="gradients", log_every=LOG_EVERY, histograms=False)
            for step in range(STEPS):
                _backward(model, opt, gen)
                if fault == "nan" and rank == 1 and step == 4:
                    dict(model.named_parameters())["2.weight"].grad.to_local()[0, 0] = float("nan")
                if fault == "die" and rank == 1 and step == STEPS - 1:
                    queue.put((rank, "left"))
                    os._exit(0)  # a rank that is gone: no exception, no goodbye
                opt.step()
    except DistributedMismatchError as exc:
        outcome = f"mismatch: {exc}"
    queue.put((rank, outcome))
    if fault != "die":
        dist.barrier()
        dist.destroy_process_group()


def _spawn_fault(tmp_path, fault):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_fault_worker, args=(2, fault, str(tmp_path), _free_port(), queue), nprocs=2, join=True)
    results = {}
    while not queue.empty():
        rank, outcome = queue.get()
        results[rank] = outcome
    return results


def test_nan_alarm_names_the_first_bad_parameter_of_any_rank(tmp_path):
    results = _spawn_fault(tmp_path, "nan")
    assert results == {0: "ok", 1: "ok"}
    [run] = autolog.list_runs(str(tmp_path))
    # only rank 1's shard was bad at step 4: rank 0 alone would see it no earlier than step 5
    assert run.meta["nonfinite"] == {"step": 4, "parameter": "2.weight", "loss": False}


def test_a_rank_that_dies_fails_the_others_after_the_timeout(tmp_path):
    results = _spawn_fault(tmp_path, "die")
    assert results[1] == "left"
    assert results[0].startswith("mismatch: ") and "waited 3s" in results[0]
    [run] = autolog.list_runs(str(tmp_path))
    assert run.status == "failed"
