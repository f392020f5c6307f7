"""CSVSink: one wide CSV file per run, readable by pandas and the `csv` module.

Columns are ``step``, ``wall_time``, then one column per scalar name in order of first
appearance. Rows are appended at every batch; when new scalar names appear the header must
change, so the whole file is copied to a temporary file in the same directory and swapped in
with `os.replace` (atomic): a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any

from autolog.store import format as store
from autolog.pipeline.records import Batch, RunInfo, RunResult, ScalarPoint
from autolog.sinks.base import Sink

FIXED_COLUMNS = ("step", "wall_time")

Row = tuple[int, float, dict[str, float]]


def rows_from_scalars(scalars: list[ScalarPoint]) -> list[Row]:
    """Merge the scalars of one batch into rows ``(step, wall_time, {name: value})``.

    All scalars of one step share a row. A name seen twice at the same step starts a new row
    for that step (nothing is dropped); the row's wall time is the latest of its points.
    Rows come out sorted by step, rows of one step in arrival order.
    """
    by_step: dict[int, list[list[Any]]] = {}
    for name, step, value, wall_time in scalars:
        rows = by_step.setdefault(step, [])
        if not rows or name in rows[-1][2]:
            rows.append([step, wall_time, {}])
        row = rows[-1]
        row[1] = max(row[1], wall_time)
        row[2][name] = value
    return [(r[0], r[1], r[2]) for step in sorted(by_step) for r in by_step[step]]


def _cell(value: Any) -> str:
    # repr(float) round-trips exactly and writes nan/inf/-inf, which pandas reads as floats.
    return repr(float(value))


class CSVSink(Sink):
    """Write every scalar of a run to one wide CSV file.

    path: the file; ``None`` means ``<run dir>/metrics.csv``, a relative path is taken relative
    to the run directory. An existing file at that path is replaced when the run opens.

    Histograms, media and config are not written (the local store and TensorBoard keep them).
    A step can span several rows when values for it arrive in different batches or a name
    repeats at one step; ``pd.read_csv(path).groupby("step").last()`` merges them.
    """

    name = "csv"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path_arg = path
        self.path: str | None = None
        self.columns: list[str] = list(FIXED_COLUMNS)
        self._index: dict[str, int] = {}  # scalar name -> column position
        self._file: io.TextIOWrapper | None = None

    # -- Sink -----------------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        path = os.fspath(self.path_arg) if self.path_arg is not None else "metrics.csv"
        self.path = os.path.join(run.path, os.path.expanduser(path))
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._replace(old_width=None, rows=[])

    def write(self, batch: Batch) -> None:
        if not batch.scalars:
            return
        rows = rows_from_scalars(batch.scalars)
        old_width = len(self.columns)
        for _step, _wall, values in rows:
            for name in values:
                if name not in self._index:
                    self._add_column(name)
        if len(self.columns) != old_width:
            try:
                self._replace(old_width=old_width, rows=rows)
            except BaseException:  # keep the file and the columns in step: retry next time
                for name in [n for n, i in self._index.items() if i >= old_width]:
                    del self._index[name]
                del self.columns[old_width:]
                self._file = open(self.path, "a", encoding="utf-8", newline="")
                raise
        else:
            assert self._file is not None
            self._file.write(self._format(rows))
            self._file.flush()

    def close(self, result: RunResult) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- internals ------------------------------------------------------------------------

    def _add_column(self, name: str) -> None:
        column = name
        while column in self.columns:  # a scalar called "step" or "wall_time"
            column += "_"
        self._index[name] = len(self.columns)
        self.columns.append(column)

    def _format(self, rows: list[Row]) -> str:
        out = io.StringIO()
        width = len(self.columns)
        for step, wall_time, values in rows:
            cells = [str(int(step)), repr(float(wall_time))] + [""] * (width - 2)
            for name, value in values.items():
                cells[self._index[name]] = _cell(value)
            out.write(",".join(cells))
            out.write("\n")
        return out.getvalue()

    def _header(self) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(self.columns)
        return out.getvalue()

    def _replace(self, old_width: int | None, rows: list[Row]) -> None:
        """Write header + old rows (padded to the new width) + `rows` to a temp file, swap it in.

        Data rows hold only numbers and empty cells, so old rows are padded line by line.
        """
        assert self.path is not None
        if self._file is not None:
            self._file.close()
            self._file = None
        with store.atomic_file(self.path, prefix=".metrics-", encoding="utf-8", newline="") as out:
            out.write(self._header())
            if old_width is not None and os.path.exists(self.path):
                pad = "," * (len(self.columns) - old_width)
                with open(self.path, encoding="utf-8", newline="") as old:
                    _skip_header(old)
                    for line in old:
                        out.write(line.rstrip("\n") + pad + "\n")
            out.write(self._format(rows))
        self._file = open(self.path, "a", encoding="utf-8", newline="")


def _skip_header(f: io.TextIOWrapper) -> None:
    """Consume one CSV record (a header with quoted newlines spans several lines)."""
    text = f.readline()
    while text.count('"') % 2:  # inside a quoted field
        more = f.readline()
        if not more:
            break
        text += more
