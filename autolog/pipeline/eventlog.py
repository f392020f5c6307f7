"""The run's log as the pipeline sees it: `EventLog` (append) and `read_batches` (read from an
offset). The store half (`autolog.store.log`) owns the bytes; until it lands this is a thin
adapter over today's record encoding, with the same signatures. Delete it when it lands.
"""
from __future__ import annotations

try:  # the store's own implementation, once merged
    from autolog.store.log import EventLog, read_batches  # noqa: F401
except ImportError:  # pragma: no cover - replaced by autolog.store.log
    import json
    import os
    import sys
    import time
    import zlib
    from typing import Any, Iterator

    from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord
    from autolog.store import format as fmt

    def _media_index(batch: Batch) -> list[dict[str, Any]]:
        return [{"kind": m.kind, "name": m.name, "step": m.step, "wall": m.wall_time, "path": m.path,
                 "text": m.data if m.kind == "text" else (m.data or {}).get("text") if m.kind == "graph" else None}
                for m in batch.media]

    class EventLog:  # type: ignore[no-redef]
        """Appends batches to ``<run_dir>/events.alog``; never raises (errors in `errors`)."""

        def __init__(self, run_dir: str, fsync_secs: float = 1.0) -> None:
            self.path = os.path.join(run_dir, fmt.EVENTS_FILE)
            self.fsync_secs = fsync_secs
            self.errors: dict[str, Any] = {}
            self._fh: Any = None
            self._end = 0
            self._last_sync = 0.0

        def append(self, batch: Batch) -> int | None:
            data = (fmt.encode_scalars(batch.scalars) + fmt.encode_histograms(batch.histograms)
                    + fmt.encode_media(_media_index(batch)))
            try:
                if self._fh is None:
                    new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
                    self._fh = open(self.path, "ab", buffering=0)
                    if new:
                        self._fh.write(fmt.MAGIC)
                    self._end = self._fh.tell()
                view = memoryview(data)
                while view:
                    view = view[self._fh.write(view):]
                self._end += len(data)
                now = time.monotonic()
                if data and now - self._last_sync >= self.fsync_secs:
                    os.fsync(self._fh.fileno())
                    self._last_sync = now
                return self._end
            except OSError as exc:
                if not self.errors:
                    print(f"autolog: cannot write {self.path}: {exc}", file=sys.stderr)
                self.errors["count"] = self.errors.get("count", 0) + 1
                self.errors.setdefault("first_error", f"{type(exc).__name__}: {exc}")
                return None

        def close(self) -> None:
            fh, self._fh = self._fh, None
            if fh is not None:
                try:
                    os.fsync(fh.fileno())
                    fh.close()
                except OSError:
                    pass

    def read_batches(path: str, start: int = 0) -> Iterator[tuple[Batch, int]]:  # type: ignore[no-redef]
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        if not data.startswith(fmt.MAGIC):
            return
        pos = max(start, len(fmt.MAGIC))
        while pos + 8 <= len(data):
            length, crc = int.from_bytes(data[pos:pos + 4], "little"), int.from_bytes(data[pos + 4:pos + 8], "little")
            payload = memoryview(data)[pos + 8:pos + 8 + length]
            if len(payload) < length or length < 5 or zlib.crc32(payload) != crc:
                return
            hlen = int.from_bytes(payload[1:5], "little")
            header, body, kind = json.loads(bytes(payload[5:5 + hlen])), payload[5 + hlen:], bytes(payload[:1])
            pos += 8 + length
            batch = Batch()
            if kind == b"S":
                names, idx, steps, values, walls = fmt.decode_scalars(header, body)
                batch.scalars = list(zip([names[i] for i in idx.tolist()], steps.tolist(),
                                         values.tolist(), walls.tolist()))
            elif kind == b"H":
                batch.histograms = [HistogramRecord(i["name"], int(i["step"]), e, c, float(i.get("wall", 0.0)))
                                    for i, e, c in fmt.decode_histograms(header, body)]
            elif kind == b"M":
                batch.media = [MediaRecord(i.get("kind", ""), i.get("name", ""), int(i.get("step", 0)),
                                           float(i.get("wall", 0.0)),
                                           data={"text": i.get("text") or ""} if i.get("kind") == "graph"
                                           else i.get("text"), path=i.get("path"))
                               for i in header["items"]]
            yield batch, pos
