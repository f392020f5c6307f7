"""Rank awareness and cross-rank reduction.

One job, one run: rank 0 creates the run and is the only rank that writes; every other rank
holds a *follower* run with the same id that writes nothing. Values logged with
``sync_dist=True`` are reduced across ranks with ONE collective per reduction point, on a
packed tensor; when sharded models are watched (`autolog.capture.sharded`), their statistics and
the synced values share TWO collectives per reduction point (`Coordinator.reduce_max_then_sum`).

The rule every rank must follow: reduction points are the hand-offs at every ``log_every``-th
optimizer step and the end of the run — points that depend only on the step count, so every
rank reaches them. Time-based and explicit ``run.flush()`` hand-offs never reduce: synced
values wait for the next reduction point. Before the collective, ranks compare what they are
about to reduce through the process group's key-value store (not a collective); a rank that
disagrees, or that does not arrive within ``AUTOLOG_DIST_TIMEOUT`` seconds (default 120, e.g.
because it died), makes the others raise `DistributedMismatchError` instead of hanging.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import timedelta
from typing import Any

import torch

REDUCE_OPS = ("mean", "sum", "max", "min")
DEFAULT_TIMEOUT = 120.0


class DistributedMismatchError(RuntimeError):
    """Ranks disagreed on what to reduce, or a rank never reached the reduction point."""


@dataclasses.dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized: bool = False  # torch.distributed has a default process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def meta(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "dist_backend": self.backend}


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return None


def context() -> DistContext:
    """This process's place in the job: torch.distributed when initialised, else torchrun's
    RANK/WORLD_SIZE/LOCAL_RANK, else SLURM's SLURM_PROCID/SLURM_NTASKS, else a single process."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK") or 0,
                           str(dist.get_backend()), True)
    rank = _env_int("RANK", "SLURM_PROCID")
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    if rank is None:
        return DistContext()
    return DistContext(rank, world or 1, _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0, None, False)


def timeout() -> float:
    try:
        return float(os.environ.get("AUTOLOG_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def as_float64(value: Any, device: torch.device) -> torch.Tensor:
    """A logged value (a number or a one-element tensor) as a 0-d float64 tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


class Coordinator:
    """Run-scoped key-value exchange through the process group's store (no collectives)."""

    _runs_started = 0  # per process: ranks start runs in the same order, so keys line up

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        Coordinator._runs_started += 1
        self.prefix = f"autolog/{Coordinator._runs_started}"
        self.store = _store() if ctx.initialized else None
        self.reductions = 0

    def _wait(self, keys: list[str], what: str) -> None:
        try:
            self.store.wait(keys, timedelta(seconds=timeout()))
        except Exception as exc:  # store timeouts differ by version: RuntimeError, DistStoreError
            raise DistributedMismatchError(
                f"autolog: rank {self.ctx.rank} waited {timeout():.0f}s for the other ranks to {what}; "
                f"a rank died or skipped it (set AUTOLOG_DIST_TIMEOUT to wait longer)") from exc

    def share_identity(self, identity: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0 publishes the run's id and path; other ranks read them."""
        if self.store is None:
            return identity
        key = f"{self.prefix}/identity"
        if self.ctx.is_main:
            self.store.set(key, json.dumps(identity))
            return identity
        self._wait([key], "start the run")
        return json.loads(self.store.get(key))

    def report_failure(self, info: dict[str, Any]) -> None:
        """A failing rank leaves its exception where rank 0 can find it."""
        if self.store is not None:
            try:
                self.store.set(f"{self.prefix}/failed/{self.ctx.rank}", json.dumps(info))
            except Exception:  # noqa: BLE001 -- the store may already be gone
                pass

    def peer_failure(self) -> dict[str, Any] | None:
        """The first other rank's recorded failure, if any."""
        if self.store is None:
            return None
        for rank in range(self.ctx.world_size):
            if rank == self.ctx.rank:
                continue
            key = f"{self.prefix}/failed/{rank}"
            try:
                if self.store.check([key]):
                    return {"rank": rank, **json.loads(self.store.get(key))}
            except Exception:  # noqa: BLE001
                return None
        return None

    def agree(self, signature: str, describe: str) -> None:
        """Check, through the store (not a collective), that every rank reached this reduction
        point with the same `signature`; raise `DistributedMismatchError` when one differs or
        does not arrive within the timeout. `describe`: what this rank has, for the message."""
        self.reductions += 1
        key = f"{self.prefix}/reduce/{self.reductions}"
        self.store.set(f"{key}/{self.ctx.rank}", signature)
        peers = [f"{key}/{r}" for r in range(self.ctx.world_size)]
        self._wait(peers, f"reach reduction point {self.reductions}")
        others = {r: self.store.get(p).decode() for r, p in enumerate(peers)}
        bad = {r: s for r, s in others.items() if s != signature}
        if bad:
            raise DistributedMismatchError(
                f"autolog: ranks disagree on the values to reduce at reduction point {self.reductions} "
                f"(rank {self.ctx.rank} has {describe}; ranks {sorted(bad)} differ). "
                "Every rank must log the same names with sync_dist=True, and watch the same models, "
                "between reduction points.")

    def reduce(self, entries: list[tuple[str, int, Any, str]], device: torch.device) -> list[float] | None:
        """Reduce (name, step, value, op) entries across ranks with one all_gather.

        Returns the reduced values on rank 0, None on other ranks."""
        dist = torch.distributed
        signature = hashlib.sha1(json.dumps([(n, s, op) for n, s, _v, op in entries]).encode()).hexdigest()
        names = sorted({n for n, _s, _v, _o in entries})
        self.agree(signature, f"{len(entries)} values: {names[:8]}")
        if not entries:
            return [] if self.ctx.is_main else None
        values = torch.stack([as_float64(v, device) for _n, _s, v, _o in entries])
        gathered = [torch.empty_like(values) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, values)  # the one collective of this reduction point
        if not self.ctx.is_main:
            return None
        stacked = torch.stack(gathered)
        out = []
        ops = [op for _n, _s, _v, op in entries]
        reduced = {"mean": stacked.mean(0), "sum": stacked.sum(0), "max": stacked.amax(0), "min": stacked.amin(0)}
        host = {op: reduced[op].cpu().tolist() for op in set(ops)}
        for i, op in enumerate(ops):
            out.append(host[op][i])
        return out

    def reduce_max_then_sum(self, signature: Any, describe: str, maxes: torch.Tensor,
                            sums: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Two collectives, on packed 1-D float64 tensors: all_reduce(MAX) of `maxes`, then
        all_reduce(SUM) of ``sums(reduced maxes)`` (the sums may depend on the maxima, e.g.
        histogram bins over the global range). The agreement check comes first, so a rank that
        died or watches something else fails the others instead of hanging them."""
        dist = torch.distributed
        self.agree(hashlib.sha1(json.dumps(signature).encode()).hexdigest(), describe)
        maxes = maxes.clone()
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        summed = sums(maxes).clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return maxes, summed
