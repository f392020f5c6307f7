"""TensorBoard sink: writes a run as TensorBoard event files.

Pure converters (record -> ``Summary``/``Event`` proto) are kept apart from the stateful
`TensorBoardSink`. Everything arrives on the host already; the sink only serialises.

The event file is the one tensorboard's ``EventFileWriter`` writes (same name, same first event,
the same TFRecord framing: ``<u64 length><u32 masked crc32c of the length><data><u32 masked
crc32c of the data>``), written by `EventFile` on the sink's own thread. The CRC32C is the
compiled one of ``google-crc32c`` (tensorboard's writer computes it in pure Python, about
0.12 µs a byte, TensorFlow or not: two thirds of the sink's cost before); without that package
the sink falls back to tensorboard's. Scalars, the bulk of a run, skip the protobuf objects:
`scalar_events` writes their ``Event`` bytes directly (byte for byte what protobuf writes).

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
import math
import numbers
import os
import socket
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

try:  # tensorboard's file-name counter, so that a SummaryWriter in the same directory never clashes
    from tensorboard.summary.writer.event_file_writer import _global_uid as _UID
except ImportError:  # pragma: no cover - moved in a future tensorboard
    import itertools

    _UID = itertools.count()
try:
    from google_crc32c import value as _crc32c  # compiled (a pure-Python fallback warns itself)
except ImportError:  # pragma: no cover - the tensorboard extra installs it
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c as _crc32c

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


# --------------------------------------------------------------------------- event files

def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C (tensorboard's ``masked_crc32c``, with a compiled CRC32C)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_LENGTH = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def tf_record(data: bytes) -> bytes:
    """One TFRecord: ``<u64 length><u32 masked crc of it><data><u32 masked crc of data>``."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _U32.pack(masked_crc32c(length)), data, _U32.pack(masked_crc32c(data))))


class EventFile:
    """A TensorBoard event file written synchronously, on the caller's thread.

    What ``tensorboard.summary.writer.event_file_writer.EventFileWriter`` writes (its file name,
    its first ``file_version`` event, its TFRecord framing) without its queue and writer
    thread: the sink already runs on a thread of its own and flushes after every batch, so a
    second hand-off per event would only cost. Records go to a buffered file; `flush` pushes
    them to the operating system. Local directories are written with ``open``; a URL
    (``s3://...``, ``gs://...``) goes through tensorboard's ``tf.io.gfile``, as
    ``EventFileWriter`` does.
    """

    def __init__(self, logdir: str, filename_suffix: str = "") -> None:
        self._logdir = logdir
        name = "events.out.tfevents.%010d.%s.%s.%s" % (time.time(), socket.gethostname(),
                                                       os.getpid(), _next_uid())
        self.path = os.path.join(logdir, name) + filename_suffix
        if "://" in logdir:
            from tensorboard.compat import tf

            tf.io.gfile.makedirs(logdir)
            self._file: Any = tf.io.gfile.GFile(self.path, "wb")
        else:
            os.makedirs(logdir, exist_ok=True)
            self._file = open(self.path, "wb")
        self.add_event(event_pb2.Event(
            wall_time=time.time(), file_version="brain.Event:2",
            source_metadata=event_pb2.SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")))
        self.flush()

    def get_logdir(self) -> str:
        """The directory the file is in (``EventFileWriter``'s name for it)."""
        return self._logdir

    def add_event(self, event: event_pb2.Event) -> None:
        self._file.write(tf_record(event.SerializeToString()))

    def add_serialized(self, events: Iterable[bytes]) -> None:
        """Serialized ``Event`` messages, one record each, in one write."""
        parts: list[bytes] = []
        add, length, u32, crc = parts.extend, _LENGTH.pack, _U32.pack, masked_crc32c
        for data in events:
            head = length(len(data))
            add((head, u32(crc(head)), data, u32(crc(data))))
        self._file.write(b"".join(parts))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
            finally:
                self._file.close()


def _next_uid() -> int:
    return _UID.get() if hasattr(_UID, "get") else next(_UID)


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


_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack
_ZERO_DOUBLE = bytes(8)


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of an int64 (negative numbers as their 64-bit complement)."""
    if 0 <= n < 0x80:
        return bytes((n,))
    if 0 < n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if 0 < n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    if not -(1 << 63) <= n < (1 << 63):
        raise ValueError(f"Value out of range: {n}")
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _float32(value: Any) -> bytes:
    """`value` as protobuf stores a ``float`` field: float32, overflow to an infinity."""
    value = float(value)
    try:
        return _FLOAT(value)
    except OverflowError:  # protobuf's C cast rounds a finite value past float32 to inf
        return _FLOAT(math.copysign(math.inf, value))


def _value_prefix(tag: str) -> bytes:
    """A ``Summary.Value``'s bytes (as the ``value`` field of a ``Summary``) up to its
    ``simple_value``'s four bytes: ``0a len [0a len tag] 15``."""
    raw = tag.encode("utf-8")
    inner = (b"\x0a" + _varint(len(raw)) + raw if raw else b"") + b"\x15"
    return b"\x0a" + _varint(len(inner) + 4) + inner


def scalar_events(points: Iterable[ScalarPoint], prefixes: dict[str, bytes] | None = None
                  ) -> tuple[list[bytes], int | None]:
    """Serialized ``Event`` messages for `points` and the largest step among them.

    Byte for byte ``Event(summary=s, step=int(step), wall_time=float(wall)).SerializeToString()``
    for each ``(s, step, wall)`` of `scalar_summaries` (one event per run of consecutive
    points sharing step and wall time), built without protobuf objects: a scalar's bytes are
    a per-tag prefix (kept in `prefixes` across calls) and its float32. `prefixes` gains
    every new tag.
    """
    if prefixes is None:
        prefixes = {}
    out: list[bytes] = []
    parts: list[bytes] = []
    key: Any = None
    last = None
    for name, step, value, wall in points:
        if (step, wall) != key:  # (the same comparison as scalar_summaries')
            if parts:
                out.append(_event_bytes(key[0], key[1], parts))
                parts = []
            key = (step, wall)
            if last is None or step > last:
                last = step
        prefix = prefixes.get(name)
        if prefix is None:
            prefix = prefixes[name] = _value_prefix(name)
        try:
            parts.append(prefix + _FLOAT(value))
        except (OverflowError, struct.error, TypeError):
            parts.append(prefix + _float32(value))
    if parts:
        out.append(_event_bytes(key[0], key[1], parts))
    return out, (int(last) if last is not None else None)


def _event_bytes(step: Any, wall: Any, values: list[bytes]) -> bytes:
    # Event: wall_time (1, double), step (2, int64), summary (5); proto3 leaves zeros out
    summary = b"".join(values)
    wall_bytes = _DOUBLE(float(wall))
    step = int(step)
    return b"".join((
        b"" if wall_bytes == _ZERO_DOUBLE else b"\x09" + wall_bytes,
        b"\x10" + _varint(step) if step else b"",
        b"\x2a", _varint(len(summary)), summary))


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
        flush_secs: the periodic flush of the ``SummaryWriter`` that `backend` gives. The sink
            writes its own event file on its thread and flushes it after every batch.
        max_queue: events that ``SummaryWriter``'s background thread may hold before its
            ``add_*`` calls block.
        hparams: write the hparams plugin entry (config + status) at close.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None, flush_secs: float = 30,
                 max_queue: int = 1000, hparams: bool = True) -> None:
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self.flush_secs = flush_secs
        self.max_queue = max_queue
        self.hparams = hparams
        self._writer: EventFile | None = None
        self._run: RunInfo | None = None
        self._config: dict[str, Any] = {}
        self._tags: dict[str, bytes] = {}  # scalar tags written, each with its bytes' prefix
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
        self._writer = EventFile(logdir)
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
        if batch.scalars:
            events, last = scalar_events(batch.scalars, self._tags)
            self._writer.add_serialized(events)
            if last is not None and last > self._last_step:
                self._last_step = last
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
