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
    stdout = _run("benchmarks.overhead", "--model", "tiny-adam", "--steps", "4", "--window", "2", "--warm", "1",
                  "--rounds", "1", "--quiet", "--json", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    names = [c.name for c in configurations()]
    assert {"plain", "floor", "plain+item", "tensorboard-manual", "wandb-offline", "autolog-disabled",
            "autolog-track [local]", "autolog-watch-gradients [local]", "autolog-watch-all [local]",
            "autolog-track [local+tb]", "autolog-watch-gradients [local+tb]",
            "autolog-watch-all [local+tb]", "autolog-default", "lightning", "lightning+self.log"} <= set(names)
    assert results["models"]["tiny-adam"]["optim"] == "adam"
    rows = results["models"]["tiny-adam"]["rows"]
    assert [r["config"] for r in rows] == names
    assert all(r["step_us"] > 0 and r["cpu_us"] > 0 for r in rows)
    for r in rows:  # every row has the new columns (None where they do not apply)
        assert {"x_floor", "writer_cpu_us_per_handoff", "writer_cpu_us_per_step", "writer_handoffs"} <= set(r)
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = table[0].split(" | ")
    assert table[0].startswith("| configuration | tiny-adam: µs/step")
    assert "tiny-adam: × floor" in header
    assert "tiny-adam: writer CPU µs/hand-off (/step)" in header
    assert [line.split(" | ")[0][2:].rstrip(" †") for line in table[1:]] == names
    assert {t["target"] for t in results["targets"]} >= {
        "tiny-adam: autolog-track [local] ≤ 15 µs/step",
        "tiny-adam: autolog-track [local+tb] within 10 µs/step of autolog-track [local]",
        "tiny-adam: autolog-default ≤ ⅓ wandb-offline's overhead",
        "tiny-adam: autolog-watch-all [local] ≤ ⅓ wandb-offline's overhead"}


def test_overhead_benchmark_reads_the_writer_threads_time(tmp_path, monkeypatch, capsys):
    """The writer column: the pipeline's `writer_time` read around a timed window that holds a
    hand-off. Where the pipeline does not count it yet, a stand-in counts `_write`."""
    import time

    from autolog.pipeline import writer
    from benchmarks import overhead

    init, write = writer.Pipeline.__init__, writer.Pipeline._write

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if not hasattr(self, "writer_time"):
            self._bench_counts = True
            self.writer_time = {"handoffs": 0, "thread_cpu_s": 0.0}

    def counting_write(self, staged):
        t = time.thread_time()
        try:
            return write(self, staged)
        finally:
            if getattr(self, "_bench_counts", False):
                self.writer_time["thread_cpu_s"] += time.thread_time() - t
                self.writer_time["handoffs"] += 1

    monkeypatch.setattr(writer.Pipeline, "__init__", counting_init)
    monkeypatch.setattr(writer.Pipeline, "_write", counting_write)
    results = overhead.main(["--model", "tiny", "--steps", "100", "--window", "100", "--rounds", "1",
                             "--quiet", "--configs", "floor", "autolog-track [local]", "autolog-default"])
    rows = {r["config"]: r for r in results["models"]["tiny"]["rows"]}
    assert rows["autolog-track [local]"]["writer_handoffs"] == 1  # step 100 of the run: window step 50
    assert rows["autolog-default"]["writer_handoffs"] == 2  # log_every 50, warm 25: steps 50 and 100
    assert rows["autolog-track [local]"]["writer_cpu_us_per_step"] >= 0
    assert rows["plain"]["writer_handoffs"] is None and rows["floor"]["writer_handoffs"] is None
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[1:]}
    column = table[0].split(" | ").index("tiny: writer CPU µs/hand-off (/step)")
    assert cells["floor"][column] == "—"
    assert cells["autolog-track [local]"][column] != "—"


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
