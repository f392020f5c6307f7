"""`watch` statistics of sharded models (FSDP2 ``fully_shard``, HSDP, DTensor tensor parallel):
the statistics of the *full* parameters and gradients, from the shards every rank holds.

At a watched step every rank computes, on the device and without reading a value back, the
partials of its local part (``DTensor.to_local()``): sums of squares (norms, update ratios),
finite minimum and maximum (histograms); they wait here, on the device, until the next
reduction point (the hand-off at every ``log_every``-th step, and the end of the run: the points
where ``sync_dist`` values are reduced, `autolog.core.distributed`). There every rank joins two
packed collectives, whatever the number of parameters:

1. ``all_reduce(MAX)`` of [max, -min] per histogram, and of -(first non-finite step) per
   parameter of the NaN/Inf alarm (a MIN over ranks: the alarm sees every rank's shard);
2. ``all_reduce(SUM)`` of the sums of squares and of the histogram bins, binned between the
   global minimum and maximum that collective 1 gave.

A histogram needs the global range before binning, so the local shard of each histogrammed
tensor is kept (a copy, on its device) from the watched step to the reduction point: extra
memory of one local shard per histogram of a watched step, freed at the reduction point. With
``histograms=False`` nothing but a few scalars per parameter is kept.

Replicated mesh dimensions (HSDP's replicate dimension, a tensor-parallel Replicate parameter)
are counted once: only the rank at coordinate 0 of those dimensions contributes its sums and
bins (the others contribute zeros; min/max are idempotent). A plain (not DTensor) parameter of
a sharded model counts as replicated on every rank: rank 0 contributes it. Rank 0 records the
results; the other ranks record nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import torch

from autolog.pipeline import stats
from autolog.core.distributed import as_float64

_NEVER = float(2**62)  # "no bad step" in the alarm's MIN reduction (exact in float64)
# Parts of parameter names that wrappers add (FSDP1, activation checkpointing, torch.compile,
# DDP): the user's names are recorded without them.
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _dtensor_type() -> Any:
    """DTensor when its module is loaded (no DTensor can exist before: never imported here)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` holds DTensor parameters (``fully_shard``, ``parallelize_module``) or is
    (or holds) an FSDP1 ``FullyShardedDataParallel``."""
    dtensor = _dtensor_type()
    if dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters()):
        return True
    return bool(_fsdp1_modules(model))


def _fsdp1_modules(model: torch.nn.Module) -> list[Any]:
    """The FSDP1 modules of `model` that hold a flat parameter."""
    return [m for m in model.modules()
            if type(m).__name__ == "FullyShardedDataParallel" and getattr(m, "_handle", None) is not None]


def named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, tuple[int, int] | None, float | None]]:
    """(user name, parameter, piece, share) per parameter of a sharded model. FSDP1 without
    ``use_orig_params``: one entry per original parameter of each flat parameter, `piece` =
    (offset, length) of its part in this rank's flat shard ((0, 0): none here). `share`, FSDP1
    only (else None): whether this rank's part counts, 1.0 or 0.0 -- the parts are disjoint
    within a shard group, so every rank of the first replica counts (FULL_SHARD and
    SHARD_GRAD_OP: the only replica; HYBRID_SHARD: the ranks of rank 0 in the replicate group;
    NO_SHARD: rank 0, which holds it whole)."""
    fsdp = _fsdp1_modules(model)
    flat = {id(m._handle.flat_param): (m._handle.flat_param, _share(m)) for m in fsdp}
    orig = {id(p): _share(m) for m in fsdp if getattr(m._handle, "_use_orig_params", False)
            for p in (getattr(m._handle.flat_param, "_params", None) or ())}
    out: list[tuple[str, torch.nn.Parameter, tuple[int, int] | None, float | None]] = []
    for name, param in model.named_parameters():
        entry = flat.get(id(param))
        if entry is None:
            out.append((clean_name(name), param, None, orig.get(id(param))))
            continue
        fp, share = entry
        base = name[:-len("_flat_param")] if name.endswith("_flat_param") else ""
        for fqn, info in zip(fp._fqns, fp._shard_param_infos):
            piece = (int(info.offset_in_shard), int(info.numel_in_shard)) if info.in_shard else (0, 0)
            out.append((clean_name(base + fqn), param, piece, share))
    return out


def _share(module: Any) -> float:
    """Whether this rank's parts of an FSDP1 module's parameters count (see `named_parameters`)."""
    dist = torch.distributed
    strategy = getattr(getattr(module, "sharding_strategy", None), "name", "FULL_SHARD")
    if strategy == "NO_SHARD":
        return 1.0 if dist.get_rank() == 0 else 0.0
    replicas = getattr(module, "_inter_node_pg", None) if "HYBRID" in strategy else None
    return 1.0 if replicas is None or dist.get_rank(replicas) == 0 else 0.0


def clean_name(name: str) -> str:
    """The user's parameter name: without the parts wrappers add, nor a leading ``module.``."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix("module.")


def local(tensor: torch.Tensor, piece: tuple[int, int] | None = None) -> torch.Tensor:
    """This rank's part of `tensor` (a DTensor's local shard; a plain tensor itself; `piece`:
    a slice of a flat 1-D parameter)."""
    to_local = getattr(tensor, "to_local", None)
    out = (to_local() if to_local is not None else tensor).detach()
    return out if piece is None else out[piece[0]:piece[0] + piece[1]]


def weight(tensor: torch.Tensor, rank: int, share: float | None = None) -> float:
    """1.0 when this rank's part of `tensor` counts in the sums, else 0.0: the rank at coordinate
    0 of every mesh dimension the tensor is not sharded over (plain tensors: rank 0; FSDP1:
    `share`, from `named_parameters`)."""
    if share is not None:
        return share
    mesh = getattr(tensor, "device_mesh", None)
    if mesh is None:
        return 1.0 if rank == 0 else 0.0
    for dim, placement in enumerate(tensor.placements):
        if not placement.is_shard() and mesh.get_local_rank(dim) != 0:
            return 0.0
    return 1.0


class ShardedStats:
    """Pending partials of a run's sharded watched models; reduced at each reduction point."""

    def __init__(self, run: Any, monitor: Any, guard: Any) -> None:
        self.run = run
        self.monitor = monitor
        self.guard = guard
        self.rank = getattr(getattr(run, "dist", None), "rank", 0)
        self.enabled = False  # a sharded model was watched: every reduction point reduces
        self._clear()

    def _clear(self) -> None:
        # (names, step, sums of squares, total name or None): norms (and a total)
        self.norms: list[tuple[tuple[str, ...], int, torch.Tensor, str | None]] = []
        # (names, step, delta sums of squares, weight sums of squares): update ratios
        self.ratios: list[tuple[tuple[str, ...], int, torch.Tensor, torch.Tensor]] = []
        # (name, step, local values (1-D copy), weight, [max, -min]): histograms
        self.hists: list[tuple[str, int, torch.Tensor, float, torch.Tensor]] = []

    # -- training thread, at watched steps (no value read) ----------------------------------
    def sums(self, parts: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """Weighted sums of squares (float64) of local `parts`, one per part: fused kernels, the
        weights passed as scalars (no host-to-device copy, which would wait for the device)."""
        with torch.no_grad():
            norms = torch._foreach_norm(list(parts), 2, dtype=torch.float64)
            return torch.stack(torch._foreach_mul(torch._foreach_mul(norms, norms), list(weights)))

    def add_norms(self, names: tuple[str, ...], step: int, sums: torch.Tensor, total: str | None = None) -> None:
        self.norms.append((names, step, sums, total))

    def add_ratios(self, names: tuple[str, ...], step: int, before: list[torch.Tensor],
                   before_sums: torch.Tensor, after: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
        """`before`: local copies of the weights before the step (consumed); `after`: the local
        parts after it."""
        with torch.no_grad():
            torch._foreach_sub_(before, list(after))
        self.ratios.append((names, step, self.sums(before, weights), before_sums))

    def add_histogram(self, name: str, step: int, part: torch.Tensor, w: float) -> None:
        """`part`: this rank's local part of the tensor (copied here)."""
        if part.is_complex():
            return
        with torch.no_grad():
            x = stats.flat_float(part).clone()
            low, high = stats.finite_range(x)
            self.hists.append((name, step, x, w, torch.stack([high, -low]).to(torch.float64)))

    # -- training thread, at a reduction point ----------------------------------------------
    def pending(self) -> bool:
        return self.enabled or bool(self.norms or self.ratios or self.hists)

    def reduce(self, coordinator: Any, device: torch.device, synced: list[tuple[str, int, Any, str]] = ()) -> None:
        """The two collectives (see the module's docstring); rank 0 records the results.

        `synced`: the run's ``sync_dist`` values of this reduction point (name, step, value, op),
        reduced in the same two collectives (mean and sum in the SUM, max and min in the MAX),
        so that a reduction point costs two collectives in all."""
        from autolog.core.distributed import DistributedMismatchError

        try:
            self._reduce(coordinator, device, list(synced))
        except DistributedMismatchError:
            raise
        except Exception as exc:  # noqa: BLE001 -- never out of the user's optimizer step
            self.guard.fail("watch", exc)

    def _reduce(self, coordinator: Any, device: torch.device, synced: list[tuple[str, int, Any, str]]) -> None:
        norms, ratios, hists = self.norms, self.ratios, self.hists
        self._clear()
        groups = self.monitor.groups() if self.monitor.active else []
        signature = [[n, s, t] for n, s, _v, t in norms] + [[n, s] for n, s, _d, _b in ratios]
        signature += [[n, s] for n, s, _x, _w, _m in hists] + [[list(k[1]), g[0]] for k, g in groups]
        signature += [[n, s, op] for n, s, _v, op in synced]
        describe = f"{len(norms) + len(ratios)} sharded norm groups, {len(hists)} histograms"
        with torch.no_grad():
            maxes = [m.to(device) for _n, _s, _x, _w, m in hists]
            maxes += [-torch.where(first < 0, _NEVER, first.to(torch.float64)).to(device) for _k, (_o, first) in groups]
            values = torch.stack([as_float64(v, device) for _n, _s, v, _o in synced]) if synced else None
            if values is not None:
                signs = torch.tensor([-1.0 if op == "min" else 1.0 for _n, _s, _v, op in synced],
                                     dtype=torch.float64, device=device)
                maxes.append(values * signs)
            max_vec = torch.cat(maxes) if maxes else torch.zeros(0, dtype=torch.float64, device=device)
            sum_parts = [values] if values is not None else []
            sum_parts += [v.to(device) for _n, _s, v, _t in norms]
            sum_parts += [t.to(device) for _n, _s, d, b in ratios for t in (d, b)]

            def with_bins(reduced: torch.Tensor) -> torch.Tensor:
                bins = []
                for i, (_n, _s, x, w, _m) in enumerate(hists):
                    high, low = reduced[2 * i], -reduced[2 * i + 1]
                    counts, _lo, _hi = stats.bin_between(x, low.to(x.dtype), high.to(x.dtype))
                    bins.append((counts * w).to(device, torch.float64))
                parts = sum_parts + bins
                return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)

            if coordinator is None:  # one process: nothing to reduce
                max_all, sum_all = max_vec, with_bins(max_vec)
            else:
                max_all, sum_all = coordinator.reduce_max_then_sum(signature, describe, max_vec, with_bins)
            offset = 2 * len(hists)
            for (_key, (start, first)), n in zip(groups, [g[1].numel() for _k, g in groups]):
                late = -max_all[offset:offset + n]
                offset += n
                reduced = torch.where(late == _NEVER, -1.0, late).to(torch.int64).to(first.device)
                self.monitor.set_group(_key, (start, reduced))
            if self.run.is_follower:
                return
            if synced:
                world = self.run.dist.world_size if coordinator is not None else 1
                top = max_all[offset:offset + len(synced)]
                wall = time.time()
                for i, (name, step, _v, op) in enumerate(synced):
                    value = {"mean": sum_all[i] / world, "sum": sum_all[i], "max": top[i], "min": -top[i]}[op]
                    self.run.buffer.scalar(name, step, value, wall)
                sum_all = sum_all[len(synced):]
            self._record(norms, ratios, hists, max_all, sum_all)

    def _record(self, norms, ratios, hists, max_all, sum_all) -> None:
        buffer = self.run.buffer
        wall = time.time()
        at = 0
        for names, step, v, total in norms:
            part = sum_all[at:at + v.numel()]
            at += v.numel()
            buffer.vector(names, step, part.sqrt(), wall)
            if total is not None:
                buffer.scalar(total, step, part.sum().sqrt(), wall)
        for names, step, d, _b in ratios:
            delta = sum_all[at:at + d.numel()].sqrt()
            norm = sum_all[at + d.numel():at + 2 * d.numel()].sqrt()
            at += 2 * d.numel()
            buffer.vector(names, step, torch.where(delta == 0, torch.zeros_like(delta), delta / norm), wall)
        for i, (name, step, _x, _w, _m) in enumerate(hists):
            counts = sum_all[at:at + stats.BINS]
            at += stats.BINS
            high, low = max_all[2 * i], -max_all[2 * i + 1]
            empty = low > high
            buffer.histogram(name, step, counts, torch.where(empty, 0.0, low), torch.where(empty, 1.0, high), wall)
