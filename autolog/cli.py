"""The `autolog` command: demo, list, show."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .reader import RunData, list_runs, read_run


def _find(ref: str, dir: str | None) -> RunData:
    if os.path.isdir(ref):
        return read_run(ref)
    for run in list_runs(dir):
        if run.id == ref or run.id.startswith(ref) or run.name == ref:
            return run
    raise SystemExit(f"autolog: no run {ref!r} under {dir or 'runs'}")


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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
    run = _find(args.run, args.dir)
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
    for p in (demo, lst, show):
        p.add_argument("--dir", default=argparse.SUPPRESS, help="runs directory")
    args = parser.parse_args(argv)
    if args.command == "demo" and args.dir is None:
        args.dir = os.environ.get("AUTOLOG_DIR", "runs")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
