"""Import time: what ``import autolog`` costs beyond ``import torch``, in fresh interpreters.

    python -m benchmarks.import_time [--repeats 7] [--json OUT]

Measured three ways, each the median of `--repeats` fresh processes: the wall time of
``import autolog`` right after ``import torch``; the cumulative time ``python -X importtime``
gives the top-level ``autolog`` import in ``import torch; import autolog`` (its own overhead
included); and ``import torch`` alone for scale. Also lists the modules autolog pulls in that
torch had not, by self time, and the optional backends (W&B, TensorBoard, Lightning, ...)
it imports that torch had not (none expected).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import describe, finish, machine, median, table

TARGET_S = 0.2
BACKENDS = ("wandb", "tensorboard", "torch.utils.tensorboard", "lightning", "pytorch_lightning",
            "matplotlib", "PIL", "pandas", "tqdm", "omegaconf", "pydantic")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WALL = ("import time, sys\n"
        "t0 = time.perf_counter(); import torch; t1 = time.perf_counter()\n"
        "before = set(sys.modules)\n"
        "import autolog; t2 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1)\n"
        "print(','.join(m for m in sys.argv[1:] if m in sys.modules and m not in before))\n")


def _python(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, check=True, cwd=ROOT, env=env)


def wall_once() -> tuple[float, float, list[str]]:
    """(import torch s, import autolog after torch s, backends autolog imported, torch had not)."""
    out = _python(["-c", WALL] + list(BACKENDS)).stdout.splitlines()
    torch_s, autolog_s = (float(v) for v in out[0].split())
    found = [m for m in out[1].split(",") if m] if len(out) > 1 else []
    return torch_s, autolog_s, found


def importtime_once() -> tuple[float, list[tuple[str, float]]]:
    """(cumulative s of the top-level ``autolog`` import, [(module, self s)] of its new imports)."""
    err = _python(["-X", "importtime", "-c", "import torch; import autolog"]).stderr.splitlines()
    entries = []  # (depth, name, self us, cumulative us), in the order Python prints them
    for line in err:
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip(" "))) // 2
        entries.append((depth, name.strip(), int(self_us), int(cum_us)))
    end = max(i for i, e in enumerate(entries) if e[0] == 0 and e[1] == "autolog")
    start = end
    while start > 0 and entries[start - 1][0] > 0:  # children are printed before their parent
        start -= 1
    modules = [(name, self_us / 1e6) for _d, name, self_us, _c in entries[start:end + 1]]
    return entries[end][3] / 1e6, modules


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top", type=int, default=8, help="how many of the heaviest modules to list")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    walls = [wall_once() for _ in range(args.repeats)]
    traces = [importtime_once() for _ in range(args.repeats)]
    torch_s = median([w[0] for w in walls])
    autolog_s = median([w[1] for w in walls])
    cumulative_s = median([t[0] for t in traces])
    backends = sorted({m for w in walls for m in w[2]})
    per_module: dict[str, list[float]] = {}
    for _cum, modules in traces:
        for name, self_s in modules:
            per_module.setdefault(name, []).append(self_s)
    heaviest = sorted(((median(v), k) for k, v in per_module.items()), reverse=True)[:args.top]

    results = {"machine": machine(), "repeats": args.repeats, "import_torch_s": torch_s,
               "import_autolog_after_torch_s": autolog_s, "importtime_cumulative_s": cumulative_s,
               "target_s": TARGET_S, "met": autolog_s < TARGET_S and cumulative_s < TARGET_S,
               "backends_imported": backends, "modules_new_after_torch": len(per_module),
               "heaviest": [{"module": k, "self_s": v} for v, k in heaviest]}
    print(f"Import time, median of {args.repeats} fresh processes ({describe(results['machine'])}):\n")
    rows = [["`import autolog` after `import torch` (wall)", f"{autolog_s * 1000:.0f}"],
            ["`python -X importtime`: cumulative of `autolog` after torch", f"{cumulative_s * 1000:.0f}"],
            ["`import torch` alone (wall, for scale)", f"{torch_s * 1000:.0f}"]]
    rows += [[f"  of which `{k}` (self)", f"{v * 1000:.1f}"] for v, k in heaviest]
    print(table(["measure", "ms"], rows))
    print(f"\nTarget < {TARGET_S * 1000:.0f} ms beyond torch: {'met' if results['met'] else 'MISSED'}. "
          f"{len(per_module)} modules imported beyond torch's. Optional backends imported by "
          f"`import autolog` (beyond torch's own): {', '.join(backends) if backends else 'none'}.")
    return finish(results, args.json)


if __name__ == "__main__":
    main()
