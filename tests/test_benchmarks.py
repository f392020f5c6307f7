"""Smoke tests: the benchmarks run end to end with tiny settings and report every configuration.

No timing is asserted: the numbers are whatever this machine gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module: str, *args: str, cwd) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_overhead_benchmark_reports_every_configuration(tmp_path):
    from benchmarks.overhead import configurations

    out = tmp_path / "overhead.json"
    stdout = _run("benchmarks.overhead", "--model", "tiny", "--steps", "4", "--window", "2",
                  "--rounds", "1", "--quiet", "--json", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    names = [c.name for c in configurations()]
    assert {"plain", "plain+item", "tensorboard-manual", "wandb-offline", "autolog-disabled",
            "autolog-track [local]", "autolog-watch-gradients [local]", "autolog-watch-all [local]",
            "autolog-track [local+tb]", "autolog-watch-gradients [local+tb]",
            "autolog-watch-all [local+tb]", "lightning", "lightning+self.log"} <= set(names)
    rows = results["models"]["tiny"]["rows"]
    assert [r["config"] for r in rows] == names
    assert all(r["step_us"] > 0 and r["cpu_us"] > 0 for r in rows)
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| configuration | tiny: µs/step")
    assert [line.split(" | ")[0][2:].rstrip(" †") for line in table[1:]] == names
    assert {t["target"] for t in results["targets"]} >= {
        "tiny: autolog-disabled within noise of plain (≤ 1%)",
        "tiny: autolog-track [local] ≤ 15 µs/step",
        "tiny: autolog-watch-all [local] < ½ wandb-offline's overhead"}


def test_sink_throughput_benchmark_writes_and_reads_every_sink(tmp_path):
    out = tmp_path / "sinks.json"
    stdout = _run("benchmarks.sink_throughput", "--points", "1000", "--keys", "10", "--repeats", "1",
                  "--json", str(out), cwd=tmp_path)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["points"] == 1000
    for key in ("local_write", "local_read", "log_to_local", "csv_write", "tensorboard_write",
                "wandb_write", "summarywriter_write", "summarywriter_read"):
        assert row[key] > 0, key
    assert "| 1,000 |" in stdout
    # the lead's original command line still works (the local store alone)
    legacy = _run("benchmarks.store_throughput", "--points", "1000", "--keys", "10", "--repeats", "1",
                  cwd=tmp_path)
    assert "LocalSink write" in legacy and "SummaryWriter" not in legacy


def test_import_time_benchmark_and_no_backend_imported(tmp_path):
    out = tmp_path / "import.json"
    _run("benchmarks.import_time", "--repeats", "1", "--json", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["import_autolog_after_torch_s"] > 0
    assert any(m["module"].startswith("autolog") for m in results["heaviest"])
    # `import autolog` imports no optional backend (W&B, TensorBoard, Lightning, ...)
    assert results["backends_imported"] == []


def test_overhead_benchmark_under_fsdp2_two_cpu_ranks(tmp_path):
    out = tmp_path / "fsdp.json"
    stdout = _run("benchmarks.overhead", "--dist", "fsdp", "--steps", "4", "--window", "2", "--rounds", "1",
                  "--json", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert [r["config"] for r in results["rows"]] == ["fsdp2", "fsdp2+watch-all"]
    assert all(r["step_us"] > 0 for r in results["rows"]) and "added_us" in results["rows"][1]
    assert "| fsdp2+watch-all |" in stdout
