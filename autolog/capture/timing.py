"""``perf/step_time`` and ``perf/samples_per_sec``, measured between optimizer steps of the first
optimizer without syncing the device.

On the CPU (and other devices) the host clock is read at each step. On CUDA an event is recorded
on the current stream at each step; the events travel with the hand-off (in the typed control
field `Batch.timing`, never seen by a sink) and the writer thread reads their elapsed time, when they have long completed.
The first step has no step time (nothing to measure it from).
"""
from __future__ import annotations

import time
from typing import Any

import torch

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
