"""The model graph for `autolog.watch(graph=True)`: a TensorBoard ``GraphDef`` and the module tree.

Tracing runs a forward pass, so it is done on a deep copy of the model, in eval mode, under
``torch.no_grad``, with the copy's hooks removed and the RNG states saved and restored: the
user's parameters, buffers (BatchNorm running statistics), training flag, hooks and random
streams are left exactly as they were. The copy costs one model's worth of memory while tracing.
"""
from __future__ import annotations

import contextlib
import copy
import random
import warnings
from typing import Any, Iterator

import torch

__all__ = ["model_graph"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called")


def model_graph(model: torch.nn.Module, example_input: Any) -> dict[str, Any]:
    """``{"graph_def": bytes, "text": str(model)}``; ``{"text": ...}`` alone when tensorboard
    is missing or the model cannot be traced.

    example_input: a tensor, a tuple/list of positional tensors, or a dict of keyword tensors.
    ``graph_def`` is a serialized ``tensorboard.compat.proto.graph_pb2.GraphDef``.
    """
    module = _unwrap(model)
    out: dict[str, Any] = {"text": str(module)}
    try:
        graph_def = _trace(module, example_input)
    except Exception:  # tensorboard missing, untraceable model, uncopyable model: text only
        return out
    out["graph_def"] = graph_def
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _trace(model: torch.nn.Module, example_input: Any) -> bytes:
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.versions_pb2 import VersionDef
    from torch.utils.tensorboard._pytorch_graph import parse

    with _rng_preserved(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace deprecation and TracerWarnings
        twin = copy.deepcopy(model)
        twin.eval()
        for m in twin.modules():
            for attr in _HOOK_DICTS:
                hooks = getattr(m, attr, None)
                if hasattr(hooks, "clear"):
                    hooks.clear()
        if isinstance(example_input, dict):
            trace = torch.jit.trace(twin, example_kwarg_inputs=example_input, check_trace=False)
        else:
            args = tuple(example_input) if isinstance(example_input, (tuple, list)) \
                else (example_input,)
            trace = torch.jit.trace(twin, args, check_trace=False)
        graph = trace.graph
        torch._C._jit_pass_inline(graph)
        nodes = parse(graph, trace)
    # producer 22, as torch.utils.tensorboard writes it
    return GraphDef(node=nodes, versions=VersionDef(producer=22)).SerializeToString()


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore the torch (CPU and initialised CUDA), Python and numpy random states."""
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py = random.getstate()
    try:
        import numpy as np
        npstate = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = npstate = None
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        if np is not None:
            np.random.set_state(npstate)
