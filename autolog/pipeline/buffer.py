"""The run buffer: what the training thread appends to between hand-offs.

Appending is all the hot path does: values that are tensors stay on their device, untouched.
Each optimizer step appends one fixed-shape *step row* to `RunBuffer.rows` (``rows.append``:
no lock, a list append is atomic; only the training thread appends rows, and `stage` swaps the
list whole) holding what the step produced::

    (names, step, clock, loss, clip, hparams, samples, event)

`names` (`StepNames`): the optimizer's series names; `step`: the run's step; `clock`:
``time.perf_counter()`` after the step; `loss`, `clip`: the step's objective and
``clip_grad_norm_`` total (tensors on their device, numbers, or None); `hparams`: None (no
point), `SAME` (unchanged since the optimizer's previous row) or a list of (name, value);
`samples`: None for a step that does not complete the run's step, else the samples it trained
on (0: unknown), which gives ``perf/step_time`` and ``perf/samples_per_sec``; `event`: a CUDA
timing event, or None. Rows are expanded into points on the writer thread (`Staged.resolve`).
`RunBuffer.stage` (at a hand-off, on the training thread) packs every pending tensor of a
device into one flat float64 tensor and starts ONE copy to the host (asynchronous on CUDA, so
even the hand-off does not wait for the device); `Staged.resolve` (on the writer thread) waits
for the copy and builds the plain host `Batch` the sinks receive.
"""
from __future__ import annotations

import operator
import threading
import time
from typing import Any, Sequence

import numpy as np
import torch

from autolog.core.process import deferred_signals  # a leaf module: imports nothing of autolog
from autolog.metrics import SAMPLES_PER_SEC, STEP_TIME
from autolog.pipeline.records import SAME, Batch, HistogramRecord, MediaRecord, Probe, ScalarColumns

Number = (int, float)
_ITEM = torch.Tensor.item
_LT = operator.lt
_CPU = torch.device("cpu")
POINT_BYTES = 120  # host memory of one pending scalar point (tuple, name ref, floats), estimated


class RunBuffer:
    """Pending records of a run. Thread-safe: `autolog.log` may be called from any thread."""

    def __init__(self) -> None:
        # Re-entrant: a SIGTERM handler that flushes may interrupt an append on the same thread.
        self._lock = threading.RLock()
        self.last_clock: Any = None  # the clock (or CUDA event) of the last run step handed off
        self._clear()

    def _clear(self) -> None:
        self.rows: list[tuple] = []  # step rows (see the module docstring)
        self.scalars: list[tuple[str, int, Any, float]] = []
        self.vectors: list[tuple[Sequence[str], int, torch.Tensor, float]] = []
        self.histograms: list[tuple[str, int, Any, Any, Any, float]] = []
        self.media: list[MediaRecord] = []
        self.config: dict[str, Any] | None = None
        self.prog_bar: set[str] = set()
        self.bar: list[tuple[str, int, Any, float]] = []  # logger=False: the console bar only
        self.probes: list[tuple[str, Any, int, Any]] = []  # control: see `probe`
        self.timing: list[Any] = []

    def reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._clear()

    def __len__(self) -> int:
        return len(self.rows) + len(self.scalars) + len(self.vectors) + len(self.histograms) + len(self.media)

    # -- hot path ---------------------------------------------------------------------------
    def scalar(self, name: str, step: int, value: Any, wall: float) -> None:
        """`value`: a Python/numpy number or a one-element tensor (kept on its device)."""
        with self._lock:
            self.scalars.append((name, step, value, wall))

    def scalars_from(self, items: list[tuple[str, Any]], step: int, wall: float) -> None:
        with self._lock:
            self.scalars.extend((name, step, value, wall) for name, value in items)

    def bar_scalars_from(self, items: list[tuple[str, Any]], step: int, wall: float) -> None:
        """Values for the console bar only (``autolog.log(..., logger=False)``): they travel in
        `Batch.bar`, which the run's log does not store."""
        with self._lock:
            self.bar.extend((name, step, value, wall) for name, value in items)

    def vector(self, names: Sequence[str], step: int, values: torch.Tensor, wall: float) -> None:
        """One scalar per name from a 1-D tensor (e.g. every layer's gradient norm at once)."""
        with self._lock:
            self.vectors.append((names, step, values, wall))

    def histogram(self, name: str, step: int, counts: Any, low: Any, high: Any, wall: float) -> None:
        """Equal-width bins between `low` and `high`; all three may be device tensors."""
        with self._lock:
            self.histograms.append((name, step, counts, low, high, wall))

    def add_media(self, record: MediaRecord) -> None:
        with self._lock:
            self.media.append(record)

    def probe(self, kind: str, key: Any, step: int, values: Any) -> None:
        """A control value (device tensor or numbers) for a writer-side processor: it travels in
        `Batch.probes`, never as a scalar a sink could see."""
        with self._lock:
            self.probes.append((kind, key, step, values))

    def add_timing(self, events: list[Any]) -> None:
        """Timing events (CUDA) for the writer-side timer: they travel in `Batch.timing`."""
        with self._lock:
            self.timing.extend(events)

    def update_config(self, config: dict[str, Any]) -> None:
        with self._lock:
            self.config = {**(self.config or {}), **config}

    def mark_prog_bar(self, names: Sequence[str]) -> None:
        with self._lock:
            self.prog_bar.update(names)

    # -- hand-off ---------------------------------------------------------------------------
    @deferred_signals()  # atomic w.r.t. SIGINT/SIGTERM: a signal cannot take the buffer and lose it
    def stage(self, step: int) -> "Staged | None":
        """Take everything pending and start its copy to the host; None when empty."""
        with self._lock:
            if not (self.rows or self.scalars or self.vectors or self.histograms or self.media or self.config
                    or self.probes or self.timing or self.bar):
                return None
            rows = self.rows
            previous = self.last_clock
            for row in reversed(rows):  # the clock of this batch's last run step, for the next one
                if row[6] is not None:
                    self.last_clock = row[2] if row[7] is None else row[7]
                    break
            bar = self.bar
            scalars = self.scalars + bar if bar else self.scalars  # the bar's last: split in resolve
            vectors, hists = self.vectors, self.histograms
            media, config, prog_bar = self.media, self.config, tuple(sorted(self.prog_bar))
            probes, timing = self.probes, self.timing
            self._clear()
        return Staged(scalars, vectors, hists, media, config, prog_bar, step, probes, timing, len(bar),
                      rows, previous)


def host_dtype(device: torch.device) -> torch.dtype:
    """The dtype values of `device` are packed in: float64 (float32 on MPS, which has none)."""
    return torch.float32 if device.type == "mps" else torch.float64


def pack(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """`tensors` (one device, in order) as a few 1-D `dtype` tensors: each run of 0-d tensors of
    one dtype (a loss per step...) is stacked by one op, not reshaped and converted one by one."""
    pieces: list[torch.Tensor] = []
    run: list[torch.Tensor] = []
    for t in tensors:
        if t.dim() == 0 and (not run or t.dtype == run[0].dtype):
            run.append(t)
            continue
        if run:
            pieces.append(torch.stack(run).to(dtype))
            run = []
        if t.dim() == 0:
            run.append(t)
        else:
            pieces.append(t.reshape(-1).to(dtype))
    if run:
        pieces.append(torch.stack(run).to(dtype))
    return pieces


class _HostCopy:
    """Tensors of one device packed into one float64 tensor, copied to the host in one go."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        device = tensors[0].device
        dtype = host_dtype(device)
        with torch.no_grad():
            pieces = pack(tensors, dtype)
            flat = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        self.event = None
        if device.type == "cuda":
            self.host = flat.to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = flat.cpu() if device.type != "cpu" else flat
        self._device_flat = flat  # keeps the source alive until the copy is done

    def values(self) -> list[Any]:
        if self.event is not None:
            self.event.synchronize()
        self._device_flat = None
        return self.host.tolist()


class _OneByOne:
    """The fallback when a device's tensors cannot be packed in one copy (a tensor torch cannot
    convert): each tensor copied alone; one that fails gives None for its elements, so it costs
    only its own points (counted as `Batch.dropped_values`)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        out: list[Any] = []
        for t in tensors:
            try:
                with torch.no_grad():
                    out.extend(t.detach().reshape(-1).to("cpu", torch.float64).tolist())
            except Exception:  # noqa: BLE001 -- this value alone is lost, never the batch
                out.extend([None] * _numel(t))
        self._values = out

    def values(self) -> list[Any]:
        return self._values


def _numel(t: Any) -> int:
    try:
        return int(t.numel())
    except Exception:  # noqa: BLE001
        return 1


def _host_copy(tensors: list[torch.Tensor]) -> Any:
    try:
        return _HostCopy(tensors)
    except Exception:  # noqa: BLE001 -- never out of the user's optimizer.step()
        return _OneByOne(tensors)


class Staged:
    """A batch whose device values are on their way to the host."""

    def __init__(self, scalars, vectors, hists, media, config, prog_bar, step, probes=(), timing=(),
                 n_bar: int = 0, rows: list[tuple] = (), previous_clock: Any = None) -> None:
        self.media, self.config, self.prog_bar, self.step = media, config, prog_bar, step
        self.rows, self.previous_clock = rows, previous_clock
        self.clock_offset = time.time() - time.perf_counter()  # a row's clock + this = its wall time
        self.columns: ScalarColumns | None = None  # the rows, expanded on the writer (`resolve`)
        self.n_bar = n_bar  # the last `n_bar` scalars are for the console bar only
        self.scalars, self.vectors, self.hists = scalars, vectors, hists
        self.probes, self.timing = list(probes), list(timing)
        # Every tensor, in order, grouped by device: scalars, vectors, then per histogram
        # counts, low, high. `slots` remembers where each went.
        groups: dict[torch.device, list[torch.Tensor]] = {}
        sizes: dict[torch.device, int] = {}

        def slot(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                dev = value.device
                groups.setdefault(dev, []).append(value)
                start = sizes.get(dev, 0)
                sizes[dev] = start + value.numel()
                return (dev, start, value.numel())
            return None

        # Scalars, most of a batch, inline (the same as `slot`, without a call per point).
        tensor = torch.Tensor
        scalar_slots: list[Any] = []
        add = scalar_slots.append
        for point in scalars:
            value = point[2]
            if isinstance(value, tensor):
                dev = value.device
                group = groups.get(dev)
                if group is None:
                    group = groups[dev] = []
                group.append(value)
                start = sizes.get(dev, 0)
                n = value.numel()
                sizes[dev] = start + n
                add((dev, start, n))
            else:
                add(None)
        self.scalar_slots = scalar_slots
        # Step rows: usually every loss is a 0-d tensor of one device and nothing else is a
        # tensor: the losses are stacked by one op into one slot. Otherwise each row's tensors
        # (loss, clip norm, tensor hyperparameters) get slots of their own.
        self.loss_slot: Any = None
        self.cpu_losses: tuple | None = None  # host tensors: read on the writer thread
        row_slots: list[Any] = []
        losses = _loss_column(rows) if rows else None
        if losses is not None:
            devices = {t.device for t in losses}
            if devices == {_CPU}:
                self.cpu_losses = losses
                rows = ()
            elif len(devices) == 1:
                try:
                    with torch.no_grad():
                        stacked = torch.stack(losses).reshape(-1)  # one op; raises on shapes that differ
                except (RuntimeError, TypeError, ValueError):
                    stacked = None
                if stacked is not None and stacked.numel() == len(losses):
                    self.loss_slot = slot(stacked)
                    rows = ()
        add = row_slots.append
        for row in rows:
            loss, clip, hp = row[3], row[4], row[5]
            ls = slot(loss) if isinstance(loss, tensor) else None
            cs = slot(clip) if isinstance(clip, tensor) else None
            hs = [slot(v) for _n, v in hp] if hp is not None and hp is not SAME and any(
                isinstance(v, tensor) for _n, v in hp) else None
            add((ls, cs, hs) if (ls or cs or hs) else None)
        self.row_slots = row_slots or [None] * len(self.rows)
        self.vector_slots = [slot(v) for _n, _s, v, _w in vectors]
        self.hist_slots = [(slot(c), slot(lo), slot(hi)) for _n, _s, c, lo, hi, _w in hists]
        self.probe_slots = [slot(v) for _k, _key, _s, v in self.probes]
        self.copies = {dev: _host_copy(ts) for dev, ts in groups.items()}
        # host memory this hand-off holds until the writer has logged it (for max_pending_mb)
        self.nbytes = POINT_BYTES * (len(scalars) + len(hists) + 4 * len(rows)) + 8 * sum(sizes.values()) + sum(
            int(getattr(m.data, "nbytes", 0) or 0) for m in media)

    def resolve(self) -> Batch:
        """The host batch; waits for the device copy (call it off the training thread).

        A value that cannot be converted costs that point (or histogram) alone: counted in
        `Batch.dropped_values`."""
        host: dict[Any, list[Any]] = {}
        for dev, copy in self.copies.items():
            try:
                host[dev] = copy.values()
            except Exception:  # noqa: BLE001 -- a failed device copy costs its values only
                host[dev] = [None] * sum(s[2] for s in self._slots_of(dev))
        dropped = 0

        def get(slot_: Any, value: Any) -> Any:
            if slot_ is None:
                return value
            dev, start, n = slot_
            return host[dev][start:start + n]

        points: list = []
        append = points.append
        timing = list(self.timing)
        dropped += self._expand_rows(host, append, timing)
        n_public = len(self.scalars) - self.n_bar
        bar: list = []
        for i, ((name, step, value, wall), sl) in enumerate(zip(self.scalars, self.scalar_slots)):
            if i == n_public:
                append = bar.append
            if sl is not None:
                value = host[sl[0]][sl[1]]  # a scalar's first (only) element
            try:
                append((name, int(step), float(value), float(wall)))
            except (TypeError, ValueError, OverflowError):
                dropped += 1
        for (names, step, value, wall), sl in zip(self.vectors, self.vector_slots):
            vals = get(sl, value)
            for n, x in zip(names, vals):
                try:
                    append((n, int(step), float(x), float(wall)))
                except (TypeError, ValueError, OverflowError):
                    dropped += 1
        histograms = []
        for (name, step, counts, low, high, wall), (sc, sl, sh) in zip(self.hists, self.hist_slots):
            try:
                histograms.append(_histogram(name, step, get(sc, counts), get(sl, low) if sl else low,
                                             get(sh, high) if sh else high, sl is not None,
                                             sh is not None, wall))
            except (TypeError, ValueError, OverflowError, IndexError, ZeroDivisionError):
                dropped += 1
        probes = []
        for (kind, key, step, value), sl in zip(self.probes, self.probe_slots):
            vals = get(sl, value)
            if vals is not None and None not in vals:
                probes.append(Probe(kind, key, int(step), [float(v) for v in vals]))
        self.copies = {}
        return Batch(scalars=points, columns=self.columns, histograms=histograms, media=list(self.media),
                     config=self.config, step=self.step, prog_bar=self.prog_bar,
                     probes=probes, timing=timing, dropped_values=dropped, bar=bar)

    def _expand_rows(self, host: dict[Any, list[Any]], append: Any, timing: list[Any]) -> int:
        """The step rows as points (writer thread): loss, clip norm, hyperparameters (a row
        marked `SAME` repeats its optimizer's previous values), step time and samples/s (from
        the clocks of consecutive run steps; CUDA events become `timing` entries). Returns the
        number of values that could not be converted."""
        dropped = 0
        offset = self.clock_offset
        previous = self.previous_clock
        last_hp: dict[Any, list[tuple[str, Any]]] = {}
        losses = None
        if self.cpu_losses is not None:
            losses = _host_values(self.cpu_losses)
        elif self.loss_slot is not None:
            dev, start, n = self.loss_slot
            losses = host[dev][start:start + n]
        if losses is not None and None not in losses:
            try:
                self.columns, events = _rows_to_columns(self.rows, losses, offset, previous)
            except (TypeError, ValueError, OverflowError):
                pass  # an odd hyperparameter: the general path below counts what it drops
            else:
                timing.extend(events)
                return 0
        for i, (row, slots) in enumerate(zip(self.rows, self.row_slots)):
            names, step, clock, loss, clip, hp, samples, event = row
            wall = clock + offset
            if losses is not None:
                loss = losses[i]
            elif slots is not None:
                ls, cs, hs = slots
                if ls is not None:
                    loss = host[ls[0]][ls[1]]
                if cs is not None:
                    clip = host[cs[0]][cs[1]]
                if hs is not None:
                    hp = [(n, host[s[0]][s[1]] if s is not None else v) for (n, v), s in zip(hp, hs)]
            try:
                if loss is not None:
                    append((names.loss, step, float(loss), wall))
            except (TypeError, ValueError, OverflowError):
                dropped += 1
            try:
                if clip is not None:
                    append((names.grad_norm, step, float(clip), wall))
            except (TypeError, ValueError, OverflowError):
                dropped += 1
            if hp is not None:
                if hp is SAME:
                    hp = last_hp.get(names, ())
                else:
                    last_hp[names] = hp
                for name, value in hp:
                    try:
                        append((name, step, float(value), wall))
                    except (TypeError, ValueError, OverflowError):
                        dropped += 1
            if samples is None:
                continue
            if event is not None:
                if previous is not None and not isinstance(previous, float):
                    timing.append((step, previous, event, samples, wall))
                previous = event
                continue
            if previous is not None and isinstance(previous, float):
                seconds = clock - previous
                append((STEP_TIME, step, seconds, wall))
                if samples and seconds > 0:
                    append((SAMPLES_PER_SEC, step, samples / seconds, wall))
            previous = clock
        return dropped

    def _slots_of(self, dev: Any) -> list[tuple[Any, int, int]]:
        slots = [s for s in self.scalar_slots + self.vector_slots + self.probe_slots + [self.loss_slot] if s]
        slots += [s for triple in self.row_slots if triple for s in (triple[0], triple[1], *(triple[2] or ())) if s]
        slots += [s for triple in self.hist_slots for s in triple if s]
        return [s for s in slots if s[0] == dev]


def _loss_column(rows: list[tuple]) -> tuple | None:
    """The rows' losses when every one is a tensor and nothing else in the rows is a tensor (no
    clip norm, no tensor hyperparameter): the usual rows, whose losses travel as one column;
    else None (each row's tensors then get slots of their own)."""
    columns = list(zip(*rows))
    losses, clips, hps = columns[3], columns[4], columns[5]
    if set(map(type, losses)) != {torch.Tensor} or set(map(type, clips)) != {type(None)}:
        return None
    for hp in hps:
        if type(hp) is list and any(isinstance(v, torch.Tensor) for _n, v in hp):
            return None
    return losses


def _host_values(losses: tuple) -> list[Any]:
    """The values of host tensors (the writer thread reads them: nothing to copy, no sync); None
    for one that is not a number. One ``item()`` each: cheaper than a stacking op at a
    hand-off's size, and each gives the GIL back to the training thread."""
    try:
        return list(map(_ITEM, losses))
    except (RuntimeError, TypeError, ValueError):
        pass
    out: list[Any] = []
    for t in losses:
        try:
            out.append(float(t))
        except (RuntimeError, TypeError, ValueError, OverflowError):
            out.append(None)
    return out


def _rows_to_columns(rows: list[tuple], losses: list[float], offset: float, previous: Any
                     ) -> tuple[ScalarColumns, list[tuple]]:
    """Step rows (no clip norm, no tensor besides the losses, read back as `losses`) as
    columns, built with numpy (no Python object per point), in step order; and the CUDA timing
    entries of rows with events. Raises TypeError/ValueError/OverflowError for a hyperparameter
    that is not a number (the caller then takes the general path)."""
    names_c, steps_c, clocks_c, _l, _c, hps_c, samples_c, events_c = zip(*rows)
    regular = _regular_columns(names_c, steps_c, clocks_c, losses, hps_c, samples_c, events_c, offset, previous)
    if regular is not None:
        return regular, []
    return _sorted_columns(rows, losses, offset, previous)


def _sorted_columns(rows: list[tuple], losses: list[float], offset: float, previous: Any
                    ) -> tuple[ScalarColumns, list[tuple]]:
    """`_rows_to_columns` for any rows: one array per series, then one stable sort by step."""
    names_c, steps_c, clocks_c, _l, _c, hps_c, samples_c, events_c = zip(*rows)
    n = len(rows)
    index: dict[str, int] = {}
    steps = np.array(steps_c, dtype=np.int64)
    walls = np.array(clocks_c, dtype=np.float64) + offset
    owners = list(dict.fromkeys(names_c))  # the StepNames of the rows' optimizers
    if len(owners) == 1:
        loss_keys = np.full(n, index.setdefault(owners[0].loss, 0), dtype=np.uint32)
    else:
        own = {o: index.setdefault(o.loss, len(index)) for o in owners}
        loss_keys = np.fromiter(map(own.__getitem__, names_c), dtype=np.uint32, count=n)
    parts = [(loss_keys, steps, np.array(losses, dtype=np.float64), walls)]
    runs: list[tuple[list, list[int]]] = []  # (hyperparameters, the rows they hold for)
    current: dict[Any, tuple[list, list[int]]] = {}
    for i, hp in enumerate(hps_c):
        if hp is None:
            continue
        if hp is SAME:
            entry = current.get(names_c[i])
            if entry is not None:
                entry[1].append(i)
            continue
        entry = current[names_c[i]] = (hp, [i])
        runs.append(entry)
    for hp, rows_of in runs:
        at = np.array(rows_of)
        m = len(rows_of)
        for name, value in hp:
            parts.append((np.full(m, index.setdefault(name, len(index)), dtype=np.uint32), steps[at],
                          np.full(m, float(value)), walls[at]))
    events: list[tuple] = []
    timed = [i for i, samples in enumerate(samples_c) if samples is not None]
    if timed:
        if any(events_c[i] is not None for i in timed):
            for i in timed:  # CUDA: the writer-side timer reads the events (`Batch.timing`)
                if previous is not None and not isinstance(previous, float):
                    events.append((steps_c[i], previous, events_c[i], samples_c[i], float(walls[i])))
                previous = events_c[i]
        else:
            at = np.array(timed)
            clocks = np.array([clocks_c[i] for i in timed], dtype=np.float64)
            before = np.concatenate(([previous if isinstance(previous, float) else np.nan], clocks[:-1]))
            seconds = clocks - before
            has = ~np.isnan(seconds)
            parts.append((np.full(int(has.sum()), index.setdefault(STEP_TIME, len(index)), dtype=np.uint32),
                          steps[at][has], seconds[has], walls[at][has]))
            samples = np.array([samples_c[i] for i in timed], dtype=np.float64)
            rate = has & (samples > 0) & (seconds > 0)
            if rate.any():
                parts.append((np.full(int(rate.sum()), index.setdefault(SAMPLES_PER_SEC, len(index)), dtype=np.uint32),
                              steps[at][rate], samples[rate] / seconds[rate], walls[at][rate]))
    keys, steps_all, values, walls_all = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.argsort(steps_all, kind="stable")  # per step: loss, hyperparameters, timing
    return ScalarColumns(list(index), keys[order], steps_all[order], values[order], walls_all[order]), events


def _regular_columns(names_c: tuple, steps_c: tuple, clocks_c: tuple, losses: list[float], hps_c: tuple,
                     samples_c: tuple, events_c: tuple, offset: float, previous: Any) -> ScalarColumns | None:
    """`_rows_to_columns` for the usual hand-off, with a few array operations and no sort: one
    optimizer; steps increasing; no CUDA event; every row timed (all with samples, or all
    without) or none; hyperparameters (if any) given at the first row, then repeated (`SAME`) or
    given again under the same names. Step i's points are row i of an (n, k) table: loss,
    hyperparameters, step time (from the second clock on), samples/s. None for other rows."""
    n = len(names_c)
    owner = names_c[0]
    if names_c.count(owner) != n or events_c.count(None) != n or not all(map(_LT, steps_c, steps_c[1:])):
        return None
    first = hps_c[0]
    hp_names: list[str] = []
    if first is not None:
        if type(first) is not list:
            return None
        hp_names = [name for name, _v in first]
        if hps_c.count(SAME) == n - 1:  # unchanged since the first row
            hp_table: Any = [float(v) for _n, v in first]  # (broadcast to every row)
        else:
            changes = [i for i, hp in enumerate(hps_c) if hp is not SAME]
            given = [hps_c[i] for i in changes]
            if any(type(hp) is not list or [name for name, _v in hp] != hp_names for hp in given):
                return None
            hp_table = np.repeat(np.array([[float(v) for _n, v in hp] for hp in given], dtype=np.float64)
                                 .reshape(len(given), len(hp_names)), np.diff(changes + [n]), axis=0)
    elif hps_c.count(None) != n:
        return None
    untimed = samples_c.count(None)
    timed = untimed == 0
    rated = timed and samples_c.count(0) != n
    if not timed and untimed != n or rated and samples_c.count(0):
        return None
    names = [owner.loss, *hp_names] + [STEP_TIME] * timed + [SAMPLES_PER_SEC] * rated
    if len(set(names)) != len(names):
        return None
    k = len(names)
    h = 1 + len(hp_names)
    table = np.empty((n, k))
    table[:, 0] = losses
    if hp_names:
        table[:, 1:h] = hp_table
    clocks = np.array(clocks_c, dtype=np.float64)
    first_timed = isinstance(previous, float)  # the first row's step time is known
    if timed:
        seconds = table[:, h]
        seconds[1:] = clocks[1:] - clocks[:-1]
        seconds[0] = clocks[0] - previous if first_timed else 1.0
        if rated:
            if not (seconds > 0).all():
                return None
            np.divide(np.array(samples_c, dtype=np.float64), seconds, out=table[:, h + 1])
    values = table.ravel()
    keys = np.tile(np.arange(k, dtype=np.uint32), n)
    steps = np.repeat(np.array(steps_c, dtype=np.int64), k)
    walls = np.repeat(clocks + offset, k)
    if timed and not first_timed:  # the first row has its loss and hyperparameters only
        keep = np.ones(n * k, dtype=bool)
        keep[h:k] = False
        values, keys, steps, walls = values[keep], keys[keep], steps[keep], walls[keep]
        if n == 1:
            names = names[:h]
    return ScalarColumns(names, keys, steps, values, walls)


def _histogram(name: str, step: int, counts: Any, low: Any, high: Any, low_dev: bool,
               high_dev: bool, wall: float) -> HistogramRecord:
    counts = [float(c) for c in counts]
    lo = float(low[0] if low_dev else low)
    hi = float(high[0] if high_dev else high)
    if not hi > lo:
        hi = lo + 1.0 if lo == lo else hi
    width = (hi - lo) / len(counts)
    edges = [lo + i * width for i in range(len(counts))] + [hi]
    return HistogramRecord(name, int(step), edges, counts, float(wall))
