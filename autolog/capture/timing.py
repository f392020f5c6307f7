"""``perf/step_time`` and ``perf/samples_per_sec``, measured between the run's steps (optimizer
steps of the first optimizer; backward calls in a run without optimizer) without syncing the
device; `SampleCounter` counts a watched model's samples.

On the CPU (and other devices) the host clock is read at each step. On CUDA an event is recorded
on the current stream at each step; the events travel with the hand-off (in the typed control
field `Batch.timing`, never seen by a sink) and the writer thread reads their elapsed time, when they have long completed.
The first step has no step time (nothing to measure it from).
"""
from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from autolog.capture.hooks import add_hook, remove_hook

STEP_TIME = "perf/step_time"
SAMPLES_PER_SEC = "perf/samples_per_sec"


class StepTimer:
    def __init__(self) -> None:
        self._last: float | None = None
        self._last_event: Any = None
        self._pending: list[tuple[int, Any, Any, int, float]] = []

    def tick(self, buffer: Any, step: int, samples: int, device: torch.device | None,
             wall: float | None = None) -> None:
        """Step `step` just completed, with `samples` samples (0: unknown)."""
        wall = time.time() if wall is None else wall
        if device is not None and device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(device))
            if self._last_event is not None:
                self._pending.append((step, self._last_event, event, samples, wall))
            self._last_event, self._last = event, None
            return
        now = time.perf_counter()
        if self._last is not None:
            seconds = now - self._last
            buffer.scalar(STEP_TIME, step, seconds, wall)
            if samples and seconds > 0:
                buffer.scalar(SAMPLES_PER_SEC, step, samples / seconds, wall)
        self._last, self._last_event = now, None

    def stage(self, buffer: Any, step: int) -> None:
        """Send the CUDA events recorded since the previous hand-off along with this one."""
        if self._pending:
            pending, self._pending = self._pending, []
            buffer.add_timing(pending)

    @staticmethod
    def prepare(batch: Any) -> None:
        """On the writer thread: turn the batch's timing events into scalars."""
        if not batch.timing:
            return
        points = []
        for step, start, end, samples, wall in batch.timing:
            end.synchronize()  # long done: the hand-off's own copy came after it
            seconds = start.elapsed_time(end) / 1000.0
            points.append((STEP_TIME, step, seconds, wall))
            if samples and seconds > 0:
                points.append((SAMPLES_PER_SEC, step, samples / seconds, wall))
        batch.timing = []
        batch.scalars = list(batch.scalars) + points


def batch_size(args: tuple, kwargs: dict) -> int:
    """The first dimension of the first tensor of a forward call's inputs (0: none)."""
    if args and type(args[0]) is torch.Tensor:  # the usual call: model(x, ...)
        return args[0].shape[0] if args[0].dim() else 0
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, (list, tuple)):
            value = next((v for v in value if isinstance(v, torch.Tensor)), None)
        elif isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, torch.Tensor)), None)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.dim() >= 1 else 0
    return 0


class SampleCounter:
    """Samples a watched model was fed in grad mode since the last step, for
    ``perf/samples_per_sec``: the first dimension of the first tensor input of each forward
    call of its *entry*, the first of its modules whose forward runs in grad mode (the model
    itself, or a submodule a framework calls directly: ``self.model(x)`` in a LightningModule's
    ``training_step``). The model's own forward is reported by `Watched`'s hook; every other
    module is hooked here until the entry is known, then only the entry. A compiled wrapper
    (``torch.compile(model)``) is its own entry: hooks inside the compiled region are not
    installed (they would break its graph)."""

    def __init__(self, model: torch.nn.Module, inner: torch.nn.Module) -> None:
        self.samples = 0
        self.entry: Any = None
        modules = [] if inner is not model and hasattr(model, "_orig_mod") else \
            [m for m in dict.fromkeys(inner.modules()) if m is not model]
        self._handles = {id(m): add_hook(m, "forward_pre", self.forward_pre_hook, with_kwargs=True)
                         for m in modules}

    def forward_pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """A module's forward pre-hook (held weakly by `autolog.capture.hooks.ModuleHook`)."""
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            self.on_forward(module, args, kwargs)
        return None

    def on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward in grad mode of `module` (the model or one of its modules)."""
        entry = self.entry
        if entry is None:
            self.entry = entry = module
            for key in [k for k in self._handles if k != id(module)]:  # only the entry is counted now
                remove_hook(self._handles.pop(key))
        if entry is module:
            self.samples += batch_size(args, kwargs)

    def remove_hooks(self) -> None:
        for handle in self._handles.values():
            remove_hook(handle)
        self._handles.clear()
