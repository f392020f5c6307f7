"""The embedded local store: every batch appended to ``events.alog`` in the run directory.

See `autolog.store` for the format. `autolog.read_run` reads it back, also while the run is
still writing.
"""
from __future__ import annotations

import os
import time

from autolog.store import format as store
from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink


class LocalSink(Sink):
    """Appends scalars, histograms and the media index to the run's record log.

    Each batch is one ``write`` followed by a flush, so a process killed after a hand-off
    reached this sink loses none of it. ``fsync_secs`` bounds what an OS crash or power loss can
    lose: the file is fsynced at most that often (0: after every batch).
    """

    name = "local"

    def __init__(self, fsync_secs: float = 1.0) -> None:
        self.fsync_secs = fsync_secs
        self._fh = None
        self._last_sync = 0.0

    def open(self, run: RunInfo) -> None:
        path = os.path.join(run.path, store.EVENTS_FILE)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._fh = open(path, "ab", buffering=0)
        if new:
            self._fh.write(store.MAGIC)

    def write(self, batch: Batch) -> None:
        media = [{"kind": m.kind, "name": m.name, "step": m.step, "wall": m.wall_time, "path": m.path,
                  "text": m.data if m.kind == "text" else (m.data or {}).get("text") if m.kind == "graph" else None}
                 for m in batch.media]
        data = (store.encode_scalars(batch.scalars) + store.encode_histograms(batch.histograms)
                + store.encode_media(media))
        if data:
            view = memoryview(data)
            while view:  # a raw write may be partial
                view = view[self._fh.write(view):]
            now = time.monotonic()
            if now - self._last_sync >= self.fsync_secs:
                os.fsync(self._fh.fileno())
                self._last_sync = now

    def close(self, result: RunResult) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
