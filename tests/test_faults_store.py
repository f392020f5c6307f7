"""The store under real faults: a disk that fills and frees, a slow fsync, write errors."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import autolog
from autolog.pipeline.records import Batch
from autolog.store import files, format as fmt
from autolog.store.log import EventLog, read_batches
from tests.helpers import child, wait_line


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs mounted for the test (needs root: mounting is a privileged call)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_injected_enospc_* covers the same paths")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"this root cannot mount a tmpfs (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt) -> str:
    """Write a filler file until the disk says ENOSPC; returns its path (delete it to free)."""
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return path


def _train(mnt, free_before_end: bool):
    """Steps 0-99 on a disk with room, 100-199 with the disk full, 200-299 after (optionally)
    freeing it; a hand-off every 10 steps. Returns the function's value and the filler path."""
    state = {}

    @autolog.track(dir=str(mnt), project="p", sinks=["local"])
    def train():
        run = autolog.current_run()
        for step in range(300):
            if step == 100:
                state["filler"] = _fill(mnt)
            if step == 200 and free_before_end:
                os.remove(state["filler"])
            autolog.log({"loss": float(step), "acc": step / 300}, step=step)
            if step == 150:
                autolog.log_image("sample", np.zeros((8, 8, 3), dtype=np.uint8), step=step)
            if step % 10 == 9:
                run.flush(wait=True)
        if not free_before_end:  # the disk is really full: only the reserve can pay for run.json
            with pytest.raises(OSError) as full:
                with open(os.path.join(mnt, "probe"), "wb") as fh:
                    fh.write(b"\0" * 8192)
            assert full.value.errno == errno.ENOSPC
        return "trained"

    return train(), state["filler"]


def test_a_disk_that_fills_and_frees_costs_only_what_could_not_be_written(small_disk, capfd):
    value, _filler = _train(small_disk, free_before_end=True)
    assert value == "trained"  # the tracked function returned normally
    [run] = autolog.list_runs(str(small_disk))
    assert run.status == "finished"
    errors = run.meta["store_errors"]
    log_errors = errors[fmt.EVENTS_FILE]
    assert log_errors["count"] >= 1 and "No space left" in log_errors["first_error"]
    steps = [s for s, _ in run.metrics["loss"]]
    assert steps[:100] == list(range(100))  # before the disk filled
    assert steps[-100:] == list(range(200, 300))  # every record after space came back
    assert len(steps) + log_errors["lost"]["scalars"] // 2 == 300  # what is missing is counted
    assert len(run.metrics["acc"]) == len(steps)
    err = capfd.readouterr().err
    assert err.count("autolog: cannot write") == 1  # told once
    stats = fmt.ScanStats()
    with open(os.path.join(run.path, fmt.EVENTS_FILE), "rb") as fh:
        list(fmt.iter_records(fh.read(), 0, stats))
    assert stats.bad_records == 0 and not stats.torn_tail  # a part-written record was cut off again


def test_a_disk_still_full_at_the_end_still_records_the_true_status(small_disk, capfd):
    value, filler = _train(small_disk, free_before_end=False)
    assert value == "trained"
    [run] = autolog.list_runs(str(small_disk))
    assert run.status == "finished"
    assert run.meta["store_errors"][fmt.EVENTS_FILE]["lost"]["scalars"] > 0
    assert [s for s, _ in run.metrics["loss"]][:100] == list(range(100))
    assert not os.path.exists(os.path.join(run.path, files.RESERVE_FILE))  # spent on run.json
    os.remove(filler)


class _FullDisk:
    """Injected ENOSPC for the log's writes (half a record goes out first, as on a real disk)
    and for run.json while the reserve is still there to free."""

    def __init__(self, monkeypatch):
        self.full = self.png_broken = False
        real_write_all = EventLog._write_all
        real_json = files.write_json_atomic

        def write_all(fd, data):
            if self.full:
                real_write_all(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            real_write_all(fd, data)

        def write_json(path, data):
            if self.full and os.path.exists(os.path.join(os.path.dirname(path), files.RESERVE_FILE)):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            real_json(path, data)

        monkeypatch.setattr(EventLog, "_write_all", staticmethod(write_all))
        monkeypatch.setattr(files, "write_json_atomic", write_json)
        monkeypatch.setattr(files, "encode_png", lambda image: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device (injected)")) if self.full or self.png_broken else b"png")


def test_injected_enospc_on_log_run_json_and_png(tmp_path, monkeypatch, capfd):
    disk = _FullDisk(monkeypatch)

    @autolog.track(dir=str(tmp_path), project="p", sinks=["local"])
    def train():
        run = autolog.current_run()
        for step in range(30):
            disk.full = 10 <= step < 20 or step >= 25
            autolog.log({"loss": float(step)}, step=step)
            if step in (12, 22, 23):  # 22: only the PNG fails, the log has room
                disk.png_broken = step == 22
                autolog.log_image(f"sample{step}", np.zeros((4, 4, 3), dtype=np.uint8), step=step)
            run.flush(wait=True)
        return 42

    assert train() == 42
    [run] = autolog.list_runs(str(tmp_path))
    assert run.status == "finished"
    assert [s for s, _ in run.metrics["loss"]] == list(range(10)) + list(range(20, 25))
    errors = run.meta["store_errors"]
    assert errors[fmt.EVENTS_FILE]["lost"]["scalars"] == 15
    assert errors["media"]["lost"] == {"images": 2}
    assert [m["name"] for m in run.media] == ["sample23"]  # a PNG that failed is not indexed
    assert os.listdir(os.path.join(run.path, files.MEDIA_DIR)) == [os.path.basename(run.media[0]["path"])]
    err = capfd.readouterr().err
    assert err.count("autolog: cannot write") == 1  # one line for the run, whatever failed


def test_a_slow_fsync_loses_no_record(tmp_path):
    """os.fsync taking 0.3 s (an NFS, a busy disk), 5000 steps at log_every=1, in a child."""
    code = textwrap.dedent(f"""
        import os, time
        import torch
        import autolog

        real_fsync = os.fsync
        def slow_fsync(fd):
            time.sleep(0.3)
            real_fsync(fd)
        os.fsync = slow_fsync

        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(8, 4)

        @autolog.track(dir={str(tmp_path)!r}, project="slow", sinks=["local"], log_every=1)
        def train():
            for _ in range(5000):
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                opt.step()
            return "ok"

        print(train())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    [run] = autolog.list_runs(str(tmp_path))
    assert run.status == "finished"
    steps = [s for s, _ in run.metrics["train/loss"]]
    assert len(steps) == 5000 and len(set(steps)) == 5000
    assert "store_errors" not in run.meta and "sink_errors" not in run.meta


def test_kill_9_while_appending_then_a_later_writer_continues_the_log(tmp_path):
    """A child appends big records in a loop and is killed with SIGKILL wherever it is."""
    proc = child(f"""
        from autolog.pipeline.records import Batch
        from autolog.store.log import EventLog
        log = EventLog({str(tmp_path)!r}, fsync_secs=1.0)
        i = 0
        while True:
            log.append(Batch(scalars=[("loss", i * 20000 + k, float(k), 0.0) for k in range(20000)], step=i))
            i += 1
            if i == 3:
                print("appending", flush=True)
    """, cwd=str(tmp_path))
    wait_line(proc, "appending")
    proc.kill()
    proc.wait(timeout=30)
    path = os.path.join(tmp_path, fmt.EVENTS_FILE)
    stats = fmt.ScanStats()
    steps = [b.step for b, _ in read_batches(path, 0, stats)]
    assert steps == list(range(len(steps))) and len(steps) >= 3  # every complete record, in order
    log = EventLog(str(tmp_path), fsync_secs=0)
    log.append(Batch(scalars=[("loss", -1, 1.0, 0.0)], step=10 ** 6))
    log.close()
    after = [b.step for b, _ in read_batches(path)]
    assert after == steps + [10 ** 6]
