"""RecordingSink: writes every call it receives to ``<run dir>/recording.jsonl``.

A minimal third-party sink, registered through the entry-point group ``autolog.sinks``
(see ../pyproject.toml), so that ``autolog.run(sinks=["recording"])`` finds it by name.
"""
from __future__ import annotations

import json
import os

from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks import Sink

__all__ = ["RecordingSink", "read_recording"]


class RecordingSink(Sink):
    name = "recording"

    def __init__(self, filename: str = "recording.jsonl") -> None:
        self.filename = filename
        self._file = None

    def open(self, run: RunInfo) -> None:
        self._file = open(os.path.join(run.path, self.filename), "a", encoding="utf-8")
        self._record({"event": "open", "id": run.id, "name": run.name, "project": run.project,
                      "config": run.config})

    def write(self, batch: Batch) -> None:
        if self._file is None:
            raise RuntimeError("RecordingSink.write outside open()..close()")
        self._record({
            "event": "write",
            "scalars": [list(point) for point in batch.scalars],
            "histograms": [h.name for h in batch.histograms],
            "media": [[m.kind, m.name, m.step] for m in batch.media],
            "config": batch.config,
        })

    def close(self, result: RunResult) -> None:
        if self._file is None:
            return
        self._record({"event": "close", "status": result.status, "summary": result.summary})
        self._file.close()
        self._file = None

    def _record(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, default=repr) + "\n")
        self._file.flush()


def read_recording(run_path: str, filename: str = "recording.jsonl") -> list[dict]:
    """The records a RecordingSink wrote for the run at `run_path`."""
    with open(os.path.join(run_path, filename), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
