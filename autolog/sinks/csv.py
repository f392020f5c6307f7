"""CSVSink: one long-format CSV file per run, readable by pandas and the `csv` module.

Columns: ``step``, ``wall_time``, ``name``, ``value`` -- one row per scalar point, in the order
the run's log has them. Long, not wide, so that the cost is linear in names and points: a new
name never rewrites the file (a wide file would need a new header, and its size grows with
rows x names), 100,000 names are 100,000 rows; rows are appended and flushed at every batch,
so the file is readable while the run writes, and `autolog sync` can append what a sink still
had to write. For the wide table::

    df = pd.read_csv(path)  # exact floats on pandas 3; before it add float_precision="round_trip"
    wide = df.pivot_table(index="step", columns="name", values="value", aggfunc="last")
"""
from __future__ import annotations

import csv
import io
import os
from typing import Any

from autolog.pipeline.records import Batch, RunInfo, RunResult
from autolog.sinks.base import Sink

COLUMNS = ("step", "wall_time", "name", "value")


def _cell(value: Any) -> str:
    # repr(float) round-trips exactly and writes nan/inf/-inf, which pandas reads as floats.
    return repr(float(value))


class CSVSink(Sink):
    """Write every scalar of a run to one long-format CSV file (see the module doc).

    path: the file; ``None`` means ``<run dir>/metrics.csv``, a relative path is taken relative
    to the run directory. An existing file at that path is replaced when the run opens (appended
    to when `autolog sync` resumes this sink or a resumed run continues it: ``RunInfo.resumed``;
    a run resumed at ``resume_step`` N first drops the file's rows at steps >= N).

    Histograms, media and config are not written (the local store and TensorBoard keep them).
    """

    name = "csv"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path_arg = path
        self.path: str | None = None
        self._file: io.TextIOWrapper | None = None
        self._writer: Any = None
        self._quoted: dict[str, str] = {}  # name -> its CSV cell (quoted when it must be)

    def open(self, run: RunInfo) -> None:
        path = os.fspath(self.path_arg) if self.path_arg is not None else "metrics.csv"
        self.path = os.path.join(run.path, os.path.expanduser(path))
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        append = run.resumed and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if append and run.resume_step is not None:
            _rewind(self.path, run.resume_step)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if not append:
            self._writer.writerow(COLUMNS)
            self._file.flush()

    def write(self, batch: Batch) -> None:
        if not batch.scalars or self._file is None:
            return
        quoted, quote = self._quoted, self._quote
        lines = [f"{step},{wall!r},{quoted.get(name) or quote(name)},{value!r}\n"
                 if type(value) is float and type(wall) is float and type(step) is int
                 else f"{int(step)},{float(wall)!r},{quoted.get(name) or quote(name)},{_cell(value)}\n"
                 for name, step, value, wall in batch.scalars]
        self._file.write("".join(lines))
        self._file.flush()

    def _quote(self, name: str) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([name])
        self._quoted[name] = cell = out.getvalue() or '""'
        return cell

    def close(self, result: RunResult) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _rewind(path: str, step: int) -> None:
    """Keep only the rows below `step` (a resumed run supersedes the rest), atomically."""
    with open(path, encoding="utf-8", newline="") as src:
        rows = list(csv.reader(src))
    tmp = f"{path}.rewind"
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(row for i, row in enumerate(rows) if i == 0 or (row and _step_below(row[0], step)))
    os.replace(tmp, path)


def _step_below(cell: str, step: int) -> bool:
    try:
        return int(cell) < step
    except ValueError:
        return True  # not a step: kept as it was
