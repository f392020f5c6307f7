"""The `autolog` command: demo, list, show, compare, plot, replay, sync.

Exit statuses: 0 done; 1 an error (no such run, no such metric, a refused target...); 2 a usage
error (argparse's), including a run reference that matches several runs; 141 (128 + SIGPIPE, what
a shell tool killed by SIGPIPE reports) when the reader of the output went away (``| head``).
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import math
import os
import sys
from typing import Any, Sequence

from autolog.store.reader import RunData, RunLookupError, find_run, list_runs, read_run


EXIT_ERROR, EXIT_USAGE, EXIT_CLOSED_PIPE = 1, 2, 128 + 13  # 13: SIGPIPE


class CommandError(Exception):
    """A message for stderr and the exit status it ends the command with."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def resolve_run(ref: str, dir: str | None) -> RunData:
    """The one run `ref` names, for every subcommand: a run directory, an exact run id, the name
    of exactly one run, or a prefix of exactly one run id. Several matches are an error listing
    them (exit 2): never a silent pick. None is an error (exit 1)."""
    try:
        return find_run(ref, dir)
    except RunLookupError as exc:
        raise CommandError(str(exc), EXIT_USAGE if exc.candidates else EXIT_ERROR) from None


_find = resolve_run  # the name the replay/sync commands use


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _select(available: Sequence[str], patterns: Sequence[str], command: str) -> list[str]:
    """Metric names for `patterns` (exact names or globs such as ``val/*``), in order."""
    chosen: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found = sorted(fnmatch.filter(available, pattern))
        else:
            found = [pattern] if pattern in available else []
        if not found:
            close = difflib.get_close_matches(pattern, available, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SystemExit(f"autolog {command}: no metric {pattern!r} in these runs{hint}")
        chosen += [name for name in found if name not in chosen]
    return chosen


MAX_COMPARED = 30  # summary rows `compare` shows without --metric
_MISSING = object()


def _same(values: list[Any]) -> bool:
    def key(v: Any) -> Any:  # NaN equals NaN here; 1 and 1.0 are equal, True and 1 are not
        return ("nan",) if isinstance(v, float) and math.isnan(v) else (type(v) is bool, v)

    try:
        return all(key(v) == key(values[0]) for v in values)
    except Exception:  # noqa: BLE001 -- values that cannot be compared differ
        return False


def _best(metric: str, values: list[Any]) -> int | None:
    """Index of the best run for `metric` (None: no direction, fewer than two numbers, a tie)."""
    from autolog.sinks.console import NO_BEST, lower_is_better

    nums = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)]
    if metric.startswith(NO_BEST) or len(nums) < 2:
        return None
    best = min(nums)[0] if lower_is_better(metric) else max(nums)[0]
    winners = [i for v, i in nums if v == best]
    return winners[0] if len(winners) == 1 else None


def cmd_demo(args: argparse.Namespace) -> int:
    from autolog.tools.demo import run_demo

    path = run_demo(dir=args.dir, epochs=args.epochs)
    run = read_run(path)
    print(f"\nautolog demo: run {run.id} {run.status}, stored in {path}")
    print(f"  metrics: {', '.join(sorted(run.metrics)[:8])}{' ...' if len(run.metrics) > 8 else ''}")
    print(f"  look at it:  autolog show {run.id} --dir {args.dir}")
    print(f"  in Python:   autolog.read_run({path!r}).metrics['val/acc']")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    runs = list_runs(args.dir, project=args.project)
    if not runs:
        print(f"no runs under {args.dir or 'runs'}")
        return 0
    print(f"{'id':28} {'project':16} {'status':11} {'duration':>9}  name")
    for run in runs:
        duration = run.meta.get("duration")
        print(f"{run.id:28} {run.project[:16]:16} {run.status:11} "
              f"{(f'{duration:.1f}s' if duration is not None else '-'):>9}  {run.name}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, args.dir)
    if args.json:
        json.dump({"id": run.id, "name": run.name, "project": run.project, "path": run.path,
                   "status": run.status, "config": run.config, "meta": run.meta, "summary": run.summary},
                  sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"run {run.id} ({run.name})  project {run.project}  status {run.status}")
    print(f"path {run.path}")
    print("config:")
    for key, value in sorted(run.config.items()):
        print(f"  {key} = {_fmt(value)}")
    print("summary:")
    for key, value in sorted(run.summary.items()):
        points = len(run.metrics.get(key, ()))
        print(f"  {key} = {_fmt(value)}" + (f"  ({points} points)" if points else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise SystemExit("autolog compare: give at least two runs")
    from autolog.tools.plot import run_labels
    from autolog.sinks.console import PER_PARAMETER, format_duration

    runs = [resolve_run(ref, args.dir) for ref in args.runs]
    keys = sorted(set().union(*(r.config for r in runs)))
    config = {k: [r.config.get(k, _MISSING) for r in runs] for k in keys}
    differ = {k: v for k, v in config.items() if not _same(v)}
    available = sorted(set().union(*(r.summary for r in runs)),
                       key=lambda k: (k.startswith(PER_PARAMETER) and k != "grad_norm/total", k))
    if args.metric:
        metrics = _select(available, args.metric, "compare")
    else:
        metrics = available[:MAX_COMPARED]
    summary = {m: [r.summary.get(m, _MISSING) for r in runs] for m in metrics}
    best = {m: _best(m, v) for m, v in summary.items()}
    if args.json:
        def plain(values: list[Any]) -> list[Any]:
            return [None if v is _MISSING else v for v in values]

        json.dump({"runs": [{"id": r.id, "name": r.name, "path": r.path, "status": r.status,
                             "duration": r.meta.get("duration")} for r in runs],
                   "config": {k: plain(v) for k, v in differ.items()},
                   "config_equal": {k: v[0] for k, v in config.items() if k not in differ},
                   "summary": {m: plain(v) for m, v in summary.items()},
                   "best": {m: runs[i].id for m, i in best.items() if i is not None}},
                  sys.stdout, indent=1, default=str)
        print()
        return 0

    def cell(value: Any, star: bool = False) -> str:
        text = "-" if value is _MISSING else _fmt(value)
        text = text if len(text) <= 28 else text[:27] + "~"
        return text + (" *" if star else "")

    rows: list[tuple[str, list[str]]] = []
    if any(r.name != r.id for r in runs):
        rows.append(("id", [r.id for r in runs]))
    rows.append(("status", [r.status for r in runs]))
    rows.append(("duration", [format_duration(r.meta.get("duration")) for r in runs]))
    rows.append((f"config: {len(differ)} of {len(config)} keys differ", []))
    rows += [(f"  {k}", [cell(v) for v in values]) for k, values in differ.items()]
    if len(config) > len(differ):
        rows.append((f"  ({len(config) - len(differ)} equal keys not shown)", []))
    rows.append(("summary  (* best)", []))
    rows += [(f"  {m}", [cell(v, i == best[m]) for i, v in enumerate(values)])
             for m, values in summary.items()]
    if len(available) > len(metrics) and not args.metric:
        rows.append((f"  ({len(available) - len(metrics)} more not shown; pick with --metric)", []))
    header = run_labels(runs)
    labels = [label for label, cells in rows if cells]
    lw = min(40, max(len(label) for label in labels))
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows if cells))
              for i, h in enumerate(header)]
    print(f"{'':{lw}}  " + "  ".join(f"{h:{w}}" for h, w in zip(header, widths)).rstrip())
    for label, cells in rows:
        if not cells:
            print(label)
            continue
        label = label if len(label) <= lw else label[:lw - 1] + "~"
        print(f"{label:{lw}}  " + "  ".join(f"{c:{w}}" for c, w in zip(cells, widths)).rstrip())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from autolog.tools.plot import default_filename, plot_runs

    runs = [resolve_run(ref, args.dir) for ref in args.runs]
    available = sorted(set().union(*(r.metrics for r in runs)))
    if not args.metric:
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise SystemExit(f"autolog plot: choose metrics with --metric NAME; these runs have: "
                         f"{shown or '(none)'}")
    metrics = _select(available, args.metric, "plot")
    for run in runs:
        lacking = [m for m in metrics if m not in run.metrics]
        if lacking:
            print(f"note: run {run.name} has no {', '.join(lacking)}", file=sys.stderr)
    try:
        path = plot_runs(runs, metrics, args.out or default_filename(metrics))
    except ImportError as exc:
        raise SystemExit(f"autolog plot: {exc}") from exc
    print(os.path.abspath(path))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from autolog.tools.replay import ReplayError, replay

    run = _find(args.run, args.dir)
    names = [name for spec in args.to for name in spec.split(",")]
    try:
        return replay(run, names, offline=args.offline, log_dir=args.log_dir, force=args.force)
    except ReplayError as exc:
        raise SystemExit(f"autolog replay: {exc}") from exc


def cmd_sync(args: argparse.Namespace) -> int:
    from autolog.tools.replay import sync

    return max(sync(_find(ref, args.dir)) for ref in args.runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autolog", description="autolog: look at tracked runs")
    parser.add_argument("--dir", default=None, help="runs directory (default $AUTOLOG_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model on synthetic data and store the run")
    demo.add_argument("--epochs", type=int, default=5)
    demo.set_defaults(func=cmd_demo)
    lst = sub.add_parser("list", help="list runs, newest first")
    lst.add_argument("--project", default=None)
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="config and summary of one run (id, id prefix, name or path)")
    show.add_argument("run")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)
    compare = sub.add_parser("compare", help="runs side by side: status, differing config, summary")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument("--metric", action="append", default=[], metavar="NAME",
                         help="summary metric to show (repeatable; globs such as 'val/*')")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(func=cmd_compare)
    plot = sub.add_parser("plot", help="plot metrics of runs against step into an image file")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--metric", action="append", default=[], metavar="NAME",
                      help="metric to plot, one panel each (repeatable; globs such as 'val/*')")
    plot.add_argument("--out", default=None, metavar="FILE",
                      help="image file (default: <metric>.png in the current directory)")
    plot.set_defaults(func=cmd_plot)
    rep = sub.add_parser("replay", help="write a stored run into sinks (tensorboard, wandb...)")
    rep.add_argument("run", metavar="RUN")
    rep.add_argument("--to", action="append", required=True, metavar="SINK",
                     help="sink name (repeatable, or comma-separated)")
    rep.add_argument("--offline", action="store_true", help="open W&B runs offline")
    rep.add_argument("--log-dir", default=None, metavar="DIR",
                     help="TensorBoard: write to DIR/<run id> instead of <run>/tensorboard")
    rep.add_argument("--force", action="store_true",
                     help="write even where this run's TensorBoard or W&B output already is")
    rep.set_defaults(func=cmd_replay)
    syn = sub.add_parser("sync", help="finish the sinks that did not get everything live, from the run's log")
    syn.add_argument("runs", nargs="+", metavar="RUN")
    syn.set_defaults(func=cmd_sync)
    for p in (demo, lst, show, compare, plot, rep, syn):
        p.add_argument("--dir", default=argparse.SUPPRESS, help="runs directory")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.dir is None:
        args.dir = os.environ.get("AUTOLOG_DIR", "runs")
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen here, not at interpreter exit
        return status
    except CommandError as exc:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
        print(f"autolog {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # the reader went away (`autolog list | head -1`): stop quietly
        _stdout_to_devnull()
        return EXIT_CLOSED_PIPE


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
