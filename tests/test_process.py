"""Process-wide state in forked children: a child's copies of the runs are inert, and the fork
handler closes no file descriptor it does not own (the numbers of closed ones are reused)."""
import multiprocessing
import os
import sys

import autolog
from autolog.core import process

run_module = sys.modules["autolog.core.run"]


def _open_fds() -> set[int]:
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if _is_open(fd)}  # not the one listdir used meanwhile


def _child_checks_fds(files):
    """Exit 0 when every descriptor of `files` (number -> (device, inode)) still refers to the
    same file in this forked child (a closed number may have been reused by the child itself)."""
    os._exit(0 if all(_identity(n) == ident for n, ident in files.items()) else 1)


def _identity(fd: int):
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_a_forked_child_closes_no_descriptor_it_does_not_own(tmp_path):
    """A finished run's lock descriptor was closed; its number goes to the next file opened. A
    fork (a DataLoader worker, a multiprocessing queue's child) must not close that file in the
    child: it did, when the run kept the stale number (the child's queue pipe closed, the parent
    waited 60 s for it: the fork test's flake)."""
    before = _open_fds()
    finished = autolog.run(sinks=["local"], dir=str(tmp_path))
    during = _open_fds()
    finished.finish()
    freed = sorted((during - before) - _open_fds())  # closed by the run's end: reusable now
    assert freed  # the run held at least its lock file
    others = {}
    for number in freed:  # another file at exactly each freed number
        fd = os.open(tmp_path / f"other-{number}", os.O_RDWR | os.O_CREAT, 0o644)
        if fd != number:
            os.dup2(fd, number)
            os.close(fd)
        others[number] = _identity(number)
    try:
        ctx = multiprocessing.get_context("fork")
        with autolog.run(sinks=["local"], dir=str(tmp_path)):  # a run open at fork time as well
            proc = ctx.Process(target=_child_checks_fds, args=(others,))
            proc.start()
            proc.join(60)
        assert proc.exitcode == 0  # 1: the child's fork handler closed a file it did not own
        assert finished in run_module._all_runs  # the finished run was still known at the fork
    finally:
        for number in others:
            os.close(number)


def _child_reports(queue):
    queue.put((autolog.current_run() is None, sys.excepthook == process.hooks._excepthook))


def test_a_forked_child_has_no_open_run_and_none_of_autologs_handlers(tmp_path):
    ctx = multiprocessing.get_context("fork")
    with autolog.run(sinks=["local"], dir=str(tmp_path)) as run:
        assert sys.excepthook == process.hooks._excepthook  # ours, while the run is open
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_reports, args=(queue,))
        proc.start()
        assert queue.get(timeout=60) == (True, False)  # no run, not our hook
        proc.join(60)
    assert proc.exitcode == 0
    assert autolog.read_run(run.path).status == "finished"
