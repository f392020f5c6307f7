"""Write tests/data/reference_series.json: what the programs of `reference_programs` record.

The goldens pin what the per-step capture path recorded *before* its rewrite, so they must be
produced by that code, not by whatever the working tree holds. They were produced from commit
5de25b3 like this (from the repository root)::

    git worktree add /tmp/ref-head 5de25b3
    PYTHONPATH=/tmp/ref-head python tests/make_reference_series.py
    git worktree remove /tmp/ref-head --force

The script imports `autolog` from wherever Python finds it (PYTHONPATH first), prints where
that is, and refuses to write unless that source is a git checkout at the expected commit
(``--expect-commit``, default 5de25b3; ``--expect-commit any`` to accept any) with no local
changes under ``autolog/``. The programs themselves are always taken from this file's
directory, so programs changed here are run against the old library.

Every program is run twice -- all of them in order, then all of them in reverse order, each in a
fresh directory -- and the two results must be identical (floats compared by their JSON text,
i.e. exactly, NaN included) before anything is written: a nondeterministic program (or one
whose result depends on what ran before it) stops the script.

The JSON holds, per program, what `reference_programs.summarize` returns (names, non-timing
series as [step, value], timing series' steps, histograms as [step, edges, counts],
``meta["nonfinite"]``, ``meta["optimizers"]``, status). Floats are written by Python's json
module (shortest repr, which round-trips exactly; NaN and Infinity as Python's json spells
them), so `json.load` gives back the very same floats.

Options: ``--output PATH`` (default tests/data/reference_series.json), ``--only NAME`` (repeat:
regenerate just those programs, keeping the others from the existing file).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "data", "reference_series.json")
EXPECTED_COMMIT = "5de25b3"


def _git(root: str, *args: str) -> str:
    return subprocess.run(["git", "-C", root, *args], check=True, capture_output=True, text=True).stdout.strip()


def _source(expect: str) -> dict[str, str]:
    import autolog

    package = os.path.dirname(os.path.abspath(autolog.__file__))
    root = os.path.dirname(package)
    print(f"autolog imported from {autolog.__file__}", file=sys.stderr)
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--", "autolog")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise SystemExit(f"autolog at {root} is not a git checkout ({exc}); use a worktree of the "
                         f"reference commit and PYTHONPATH (see this script's docstring)")
    if dirty:
        raise SystemExit(f"autolog at {root} has local changes under autolog/:\n{dirty}\n"
                         f"the goldens must come from a clean checkout of the reference commit")
    if expect != "any" and not commit.startswith(expect):
        raise SystemExit(f"autolog at {root} is at {commit[:12]}, expected {expect} "
                         f"(PYTHONPATH=/path/to/worktree-of-{expect}, or --expect-commit any)")
    import torch

    return {"commit": commit, "autolog_path": root, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def _run_all(names: list[str]) -> dict[str, str]:
    """name -> the JSON text of its summary, each program in a fresh directory."""
    import reference_programs as rp

    out = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"ref-{name}-") as tmp:
            path = rp.PROGRAMS[name](tmp)
            out[name] = json.dumps(rp.summarize(path), sort_keys=True)
            print(f"  {name}: {len(json.loads(out[name])['series'])} series", file=sys.stderr)
    return out


def _dumps(value: object, depth: int = 0) -> str:
    """JSON with the objects of the top levels (document, programs, a program, its series)
    spread over lines and everything below them (one series, one histogram) on one line."""
    if isinstance(value, dict) and value and depth < 4:
        pad = " " * (depth + 1)
        items = [f"{pad}{json.dumps(k)}: {_dumps(value[k], depth + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    return json.dumps(value, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--expect-commit", default=EXPECTED_COMMIT)
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args(argv)

    sys.path.insert(0, HERE)  # reference_programs from this checkout, autolog from PYTHONPATH
    source = _source(args.expect_commit)
    import reference_programs as rp

    names = args.only or list(rp.PROGRAMS)
    unknown = [n for n in names if n not in rp.PROGRAMS]
    if unknown:
        raise SystemExit(f"unknown programs: {unknown}; known: {list(rp.PROGRAMS)}")

    print("pass 1 (in order)", file=sys.stderr)
    first = _run_all(names)
    print("pass 2 (reverse order)", file=sys.stderr)
    second = _run_all(list(reversed(names)))
    unstable = [n for n in names if first[n] != second[n]]
    if unstable:
        raise SystemExit(f"nondeterministic programs (two runs differ): {unstable}; nothing written")

    programs = {}
    if args.only and os.path.exists(args.output):
        with open(args.output) as f:
            programs = json.load(f)["programs"]
    programs.update({n: json.loads(first[n]) for n in names})
    document = {
        "about": "Golden series of tests/reference_programs.py, written by tests/make_reference_series.py "
                 "(see its docstring); checked by tests/test_capture_reference.py.",
        "source": source,
        "programs": {n: programs[n] for n in sorted(programs)},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(_dumps(document) + "\n")
    with open(tmp) as f:  # the floats come back exactly
        assert all(json.dumps(v, sort_keys=True) == first[n]
                   for n, v in json.load(f)["programs"].items() if n in first)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {len(programs)} programs, from autolog {source['commit'][:12]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
