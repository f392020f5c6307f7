"""TensorBoard sink: writes a run as TensorBoard event files with tensorboard's own writer.

Pure converters (record -> ``Summary``/``Event`` proto) are kept apart from the stateful
`TensorBoardSink`. Everything arrives on the host already; the sink only serialises.

Histograms: autolog computes them on the device as fixed bins (edges, counts). TensorBoard's
``HistogramProto`` wants ``min``, ``max``, ``num``, ``sum`` and ``sum_squares`` too. They are
estimated from the bins: ``min``/``max`` are the outer edges (TensorBoard's histogram plugin uses
them as the left edge of the first bucket and the right edge of the last one, so the buckets it
draws are exactly autolog's), ``num`` is the total count, and ``sum``/``sum_squares`` assume the
values are spread uniformly inside each bucket (``c*(a+b)/2`` and ``c*(a*a+a*b+b*b)/3`` for a
bucket ``[a, b)`` holding ``c`` values). The plugin draws buckets only; the estimates matter
only to tools that read the moments.
"""
from __future__ import annotations

import glob
import numbers
import os
import struct
import threading
import time
from typing import Any, Iterable, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.hparams import api_pb2 as hp_api
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2 as hp_pb2
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from autolog.pipeline.records import Batch, HistogramRecord, MediaRecord, RunInfo, RunResult, ScalarPoint
from autolog.sinks.base import Sink

__all__ = ["TensorBoardSink"]

_BACKEND_LOCK = threading.Lock()  # module-wide, so that sinks stay picklable

# RunResult.status -> the hparams plugin's session status
_STATUS = {
    "finished": hp_api.STATUS_SUCCESS,
    "failed": hp_api.STATUS_FAILURE,
    "interrupted": hp_api.STATUS_FAILURE,  # the plugin has no "aborted"
}


# --------------------------------------------------------------------------- pure converters

def scalar_summaries(points: Iterable[ScalarPoint]) -> list[tuple[summary_pb2.Summary, int, float]]:
    """(summary, step, wall_time) per run of consecutive points sharing step and wall time."""
    out: list[tuple[summary_pb2.Summary, int, float]] = []
    key = None
    for name, step, value, wall in points:
        if (step, wall) != key:
            key = (step, wall)
            out.append((summary_pb2.Summary(), step, wall))
        out[-1][0].value.add(tag=name, simple_value=float(value))
    return out


def histogram_summary(tag: str, edges: list[float], counts: list[float]) -> summary_pb2.Summary:
    """A ``HistogramProto`` from precomputed bins (moments estimated, see the module doc)."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"histogram {tag!r}: {len(edges)} edges for {len(counts)} counts")
    num = total = squares = 0.0
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        if c:
            num += c
            total += c * (a + b) / 2.0
            squares += c * (a * a + a * b + b * b) / 3.0
    histo = summary_pb2.HistogramProto(
        min=float(edges[0]) if edges else 0.0,
        max=float(edges[-1]) if edges else 0.0,
        num=num,
        sum=total,
        sum_squares=squares,
        bucket_limit=[float(e) for e in edges[1:]],
        bucket=[float(c) for c in counts],
    )
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, histo=histo)])


def image_summary(tag: str, png: bytes, height: int, width: int,
                  channels: int) -> summary_pb2.Summary:
    """An image summary from PNG bytes (colorspace 1 grey, 3 RGB, 4 RGBA)."""
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                      encoded_image_string=png)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])


def text_summary(tag: str, text: str) -> summary_pb2.Summary:
    """A text-plugin summary (rendered as markdown by TensorBoard)."""
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    meta = text_metadata.create_summary_metadata(display_name=tag, description="")
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])


def hparam_value(value: Any) -> bool | float | str:
    """A value the hparams plugin accepts: bool, number or string (anything else stringified)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.integer, np.floating)):
        return float(value)
    return str(value)


def _plugin_summary(tag: str, data: hp_pb2.HParamsPluginData) -> summary_pb2.Summary:
    # the hparams plugin reads only the metadata; the tensor is an empty placeholder
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=hp_metadata.create_summary_metadata(data),
        tensor=TensorProto(dtype="DT_FLOAT", tensor_shape=TensorShapeProto(
            dim=[TensorShapeProto.Dim(size=0)])))])


def hparams_summaries(config: Mapping[str, Any], group: str, start_time: float,
                      status: str, end_time: float) -> list[summary_pb2.Summary]:
    """Session start (hparams) and session end (status) summaries for the hparams plugin.

    No experiment summary is written: the plugin then builds the HPARAMS table from every
    run's session start info (the union of config keys across runs) and takes each run's
    metrics from its scalar tags, last value.
    """
    start = hp_pb2.SessionStartInfo(group_name=group, start_time_secs=start_time)
    for key in sorted(config):
        value = hparam_value(config[key])
        if isinstance(value, bool):
            start.hparams[key].bool_value = value
        elif isinstance(value, float):
            start.hparams[key].number_value = value
        else:
            start.hparams[key].string_value = value
    end = hp_pb2.SessionEndInfo(status=_STATUS.get(status, hp_api.STATUS_UNKNOWN),
                                end_time_secs=end_time)
    return [
        _plugin_summary(hp_metadata.SESSION_START_INFO_TAG,
                        hp_pb2.HParamsPluginData(session_start_info=start,
                                                 version=hp_metadata.PLUGIN_DATA_VERSION)),
        _plugin_summary(hp_metadata.SESSION_END_INFO_TAG,
                        hp_pb2.HParamsPluginData(session_end_info=end,
                                                 version=hp_metadata.PLUGIN_DATA_VERSION)),
    ]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: Mapping[str, Any], header: tuple[str, str] = ("key", "value")) -> str:
    """A two-column markdown table (TensorBoard's TEXT tab renders tables)."""
    if not rows:
        return "*(empty)*"
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels (3: palette)


def png_shape(png: bytes) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", png[16:24])
    return height, width, _PNG_CHANNELS.get(png[25], 3)


def _png_bytes(array: Any) -> bytes:
    import io

    from PIL import Image  # only when the core did not write the PNG

    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the sink

class TensorBoardSink(Sink):
    """Writes scalars, histograms, images, text, the model graph and hparams for TensorBoard.

    Args:
        log_dir: where the event files go. ``None`` (default): ``<run dir>/tensorboard``, so
            ``tensorboard --logdir <dir>/<project>`` shows every run of a project side by side.
            A path: ``<log_dir>/<run id>``, one TensorBoard run per autolog run under it.
        flush_secs: the writer's own periodic flush; the sink also flushes after every batch.
        max_queue: events the writer's background thread may hold before ``write`` blocks.
        hparams: write the hparams plugin entry (config + status) at close.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None, flush_secs: float = 30,
                 max_queue: int = 1000, hparams: bool = True) -> None:
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.flush_secs = flush_secs
        self.max_queue = max_queue
        self.hparams = hparams
        self._writer: EventFileWriter | None = None
        self._run: RunInfo | None = None
        self._config: dict[str, Any] = {}
        self._tags: set[str] = set()
        self._last_step = 0
        self._start = 0.0
        self._user_writer: Any = None  # the SummaryWriter `backend()` gave, closed with the sink

    @property
    def path(self) -> str | None:
        """The directory the event files are written to (known once the run is open)."""
        return self._writer.get_logdir() if self._writer is not None else None

    def _logdir(self, run: RunInfo) -> str:
        return os.path.join(run.path, "tensorboard") if self.log_dir is None else os.path.join(self.log_dir, run.id)

    def existing_output(self, run: RunInfo) -> str | None:
        target = self._logdir(run)
        if glob.glob(os.path.join(glob.escape(target), "events.out.tfevents.*")):
            return (f"{target} already holds TensorBoard event files (from the live run or an earlier "
                    f"replay); another would make TensorBoard show every point twice. Write elsewhere "
                    f"with --log-dir DIR, or add one anyway with --force")
        return None

    def open(self, run: RunInfo) -> None:
        self._run = run
        self._config = dict(run.config)
        start = run.meta.get("start_timestamp", run.meta.get("start_time"))
        self._start = float(start) if _is_number(start) else time.time()
        logdir = self._logdir(run)
        self._writer = EventFileWriter(logdir, max_queue_size=self.max_queue,
                                       flush_secs=self.flush_secs)
        if run.resume_step is not None:
            # A resumed run: TensorBoard's own purge (what SummaryWriter(purge_step=N) writes) makes
            # it drop what earlier event files hold at steps >= N, so the charts line up.
            self._writer.add_event(event_pb2.Event(step=int(run.resume_step), wall_time=time.time(),
                                                   session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self._add(text_summary("config", markdown_table(self._config)), run.resume_step or 0, time.time())
        self._writer.flush()

    def write(self, batch: Batch) -> None:
        if self._writer is None:
            raise RuntimeError("TensorBoardSink.write before open")
        self._last_step = max(self._last_step, batch.step)
        for summary, step, wall in scalar_summaries(batch.scalars):
            self._tags.update(v.tag for v in summary.value)
            self._last_step = max(self._last_step, step)
            self._add(summary, step, wall)
        for h in batch.histograms:
            self._histogram(h)
        for m in batch.media:
            self._media(m)
        if batch.config:
            self._config.update(batch.config)
            self._add(text_summary("config", markdown_table(self._config)), batch.step,
                      time.time())
        self._writer.flush()

    def close(self, result: RunResult) -> None:
        if self._writer is None:
            return
        try:
            now = time.time()
            self._config.update(result.config or {})
            # summary values that are not scalar series (e.g. the function's return values)
            extra = {k: v for k, v in result.summary.items()
                     if k not in self._tags and k not in result.series and _is_number(v)}
            if extra:
                points = [(k, self._last_step, float(v), now) for k, v in extra.items()]
                for summary, step, wall in scalar_summaries(points):
                    self._add(summary, step, wall)
            rows = {"status": result.status, **result.summary}
            self._add(text_summary("summary", markdown_table(rows, ("metric", "value"))),
                      self._last_step, now)
            if self.hparams:
                group = self._run.id if self._run is not None else ""
                for summary in hparams_summaries(self._config, group, self._start,
                                                 result.status, now):
                    self._add(summary, 0, now)
            self._writer.flush()
        finally:
            self._writer.close()
            self._writer = None
            with _BACKEND_LOCK:
                user, self._user_writer = self._user_writer, None
            if user is not None:
                user.close()

    def backend(self) -> Any:
        """A ``torch.utils.tensorboard.SummaryWriter`` on this sink's log directory (made at the
        first call, on the caller's thread; closed when the sink closes), or None before the
        sink is open or after it closed. It writes an event file of its own beside the sink's,
        so it shares nothing with the sink's thread; TensorBoard shows both as one run."""
        with _BACKEND_LOCK:
            if self._user_writer is None and self._writer is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._user_writer = SummaryWriter(log_dir=self._writer.get_logdir(), max_queue=self.max_queue,
                                                  flush_secs=self.flush_secs)
            return self._user_writer

    # ---------------------------------------------------------------- helpers

    def _add(self, summary: summary_pb2.Summary, step: int, wall: float) -> None:
        self._writer.add_event(event_pb2.Event(summary=summary, step=int(step),
                                               wall_time=float(wall)))

    def _histogram(self, h: HistogramRecord) -> None:
        self._add(histogram_summary(h.name, list(h.edges), list(h.counts)), h.step, h.wall_time)

    def _media(self, m: MediaRecord) -> None:
        if m.kind in ("image", "figure"):
            self._image(m)
        elif m.kind == "text":
            self._add(text_summary(m.name, str(m.data)), m.step, m.wall_time)
        elif m.kind == "graph":
            data = m.data if isinstance(m.data, Mapping) else {}
            if data.get("graph_def"):
                self._writer.add_event(event_pb2.Event(
                    graph_def=bytes(data["graph_def"]), step=int(m.step),
                    wall_time=float(m.wall_time)))
            if data.get("text"):
                # four-space indent: a markdown code block keeps the module tree's layout
                body = "\n".join("    " + line for line in str(data["text"]).splitlines())
                self._add(text_summary(m.name, body), m.step, m.wall_time)

    def _image(self, m: MediaRecord) -> None:
        png = None
        if m.path and self._run is not None:
            file = os.path.join(self._run.path, m.path)
            if os.path.isfile(file):
                with open(file, "rb") as f:
                    png = f.read()
        if png is not None:  # the core already wrote the PNG: reuse its bytes
            height, width, channels = png_shape(png)
        else:
            arr = np.asarray(m.data)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            height, width, channels = arr.shape
            png = _png_bytes(arr)
        self._add(image_summary(m.name, png, height, width, channels), m.step, m.wall_time)


def _is_number(value: Any) -> bool:
    """A Python or numpy number (bools included), not a string that looks like one."""
    if isinstance(value, numbers.Number):
        return not isinstance(value, complex)
    return isinstance(value, np.bool_)
