"""The command line as a shell tool: a closed pipe ends it quietly (exit 141, no traceback), and
a run reference names exactly one run or is an error listing the candidates."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import autolog
from autolog.tools import cli


def _command(*args):
    exe = shutil.which("autolog")
    return [exe, *args] if exe else [sys.executable, "-m", "autolog.tools.cli", *args]


@pytest.fixture
def runs(tmp_path):
    made = []
    for name, lr in (("same", 0.1), ("same", 0.01), ("unique", 0.001)):
        with autolog.run(dir=str(tmp_path / "runs"), project="p", name=name, sinks=["local"],
                         config={"lr": lr}) as run:
            autolog.log("loss", lr)
        made.append(run)
    return made


@pytest.mark.parametrize("args", [("list",), ("show", "unique"), ("show", "unique", "--json"),
                                  ("compare", "unique", "RUN0", "--json")])
def test_a_closed_pipe_ends_the_command_quietly_with_status_141(tmp_path, runs, args):
    args = tuple(runs[0].id if a == "RUN0" else a for a in args)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails (EPIPE)
    try:
        proc = subprocess.run(_command(*args, "--dir", str(tmp_path / "runs")), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""


def test_the_same_commands_print_normally_through_an_open_pipe(tmp_path, runs):
    proc = subprocess.run(_command("compare", "unique", runs[0].id, "--json", "--dir", str(tmp_path / "runs")),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)["runs"]] == [runs[2].id, runs[0].id]


def test_an_ambiguous_reference_is_an_error_listing_every_candidate(tmp_path, runs, capsys):
    root = str(tmp_path / "runs")
    prefix = os.path.commonprefix([r.id for r in runs])
    assert cli.main(["show", prefix, "--dir", root]) == 2
    err = capsys.readouterr().err
    assert f"{prefix!r} matches 3 runs" in err and all(r.id in err for r in runs)
    assert cli.main(["show", "same", "--dir", root]) == 2  # a name two runs share
    err = capsys.readouterr().err
    assert "matches 2 runs" in err and runs[0].id in err and runs[1].id in err and runs[2].id not in err
    assert cli.main(["compare", "same", "unique", "--dir", root]) == 2  # every subcommand resolves alike


def test_one_match_resolves_by_id_prefix_name_or_directory(tmp_path, runs, capsys):
    root = str(tmp_path / "runs")
    for ref in (runs[1].id, runs[1].id[:-2], runs[1].path):
        assert cli.resolve_run(ref, root).id == runs[1].id
    assert cli.resolve_run("unique", root).id == runs[2].id
    assert cli.main(["show", runs[1].id[:-2], "--dir", root]) == 0
    assert runs[1].id in capsys.readouterr().out


def test_no_match_is_exit_1_with_a_clear_message(tmp_path, runs, capsys):
    assert cli.main(["show", "nope", "--dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("autolog show: no run 'nope' under ") and "3 runs there" in err
