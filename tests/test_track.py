"""@autolog.track and autolog.run: callables of every kind, defaults, environment, nesting."""
import inspect
import multiprocessing
import os
import pickle

import pytest

import autolog


def plain(lr: float = 0.1, epochs: int = 2) -> float:
    """Train something."""
    return lr * epochs


tracked = autolog.track(plain, sinks=["local"])


class Trainer:
    def fit(self, lr: float = 0.1) -> float:
        """Fit."""
        autolog.log("x", lr)
        return lr

    @staticmethod
    def static_fit(lr: float = 0.2) -> float:
        """Static fit."""
        return lr

    @classmethod
    def class_fit(cls, lr: float = 0.3) -> float:
        """Class fit."""
        return lr


class TrackedTrainer:
    @autolog.track(sinks=["local"])
    def fit(self, lr: float = 0.1) -> float:
        """Fit."""
        autolog.log("x", lr)
        return lr

    @staticmethod
    @autolog.track(sinks=["local"])
    def static_fit(lr: float = 0.2) -> float:
        """Static fit."""
        return lr

    @classmethod
    @autolog.track(sinks=["local"])
    def class_fit(cls, lr: float = 0.3) -> float:
        """Class fit."""
        return lr


@pytest.mark.parametrize("pair", [
    (plain, tracked),
    (Trainer.fit, TrackedTrainer.fit),
    (Trainer().fit, TrackedTrainer().fit),
    (Trainer.static_fit, TrackedTrainer.static_fit),
    (Trainer.class_fit, TrackedTrainer.class_fit),
], ids=["function", "unbound-method", "bound-method", "staticmethod", "classmethod"])
def test_decorated_twin_keeps_identity(pair):
    undecorated, decorated = pair
    assert decorated.__name__ == undecorated.__name__
    assert decorated.__qualname__.split(".")[-1] == undecorated.__qualname__.split(".")[-1]
    assert decorated.__doc__ == undecorated.__doc__
    assert inspect.signature(decorated) == inspect.signature(undecorated)


@autolog.track(sinks=["local"])
def module_level_train(lr=0.1):
    return lr


def test_decorated_function_pickles_by_reference():
    assert pickle.loads(pickle.dumps(module_level_train)) is module_level_train


@pytest.mark.parametrize("call,expected", [
    (lambda: TrackedTrainer().fit(lr=0.5), 0.5),
    (lambda: TrackedTrainer.static_fit(0.25), 0.25),
    (lambda: TrackedTrainer.class_fit(), 0.3),
    (lambda: tracked(0.5, epochs=3), 1.5),
])
def test_each_kind_of_callable_records_a_run_without_self_or_cls(call, expected, tmp_path):
    assert call() == expected
    [run] = autolog.list_runs(str(tmp_path / "runs"))
    assert run.status == "finished"
    assert "self" not in run.config and "cls" not in run.config
    assert run.config["lr"] == expected if "epochs" not in run.config else run.config == {"lr": 0.5, "epochs": 3}


def test_bare_decorator_and_defaults(tmp_path):
    @autolog.track
    def train_bare(lr=1e-3):
        return {"best": 2.0}

    assert train_bare() == {"best": 2.0}
    [run] = autolog.list_runs()  # default dir "runs" in cwd (tmp_path)
    assert run.project == "train_bare"  # no script name under pytest: the function's name
    assert run.config == {"lr": 1e-3}
    assert run.summary["best"] == 2.0
    assert os.path.dirname(os.path.dirname(run.path)) == str(tmp_path / "runs")


def test_nested_tracked_calls_join_the_outer_run(tmp_path):
    @autolog.track(sinks=["local"])
    def inner(k=1):
        autolog.log("inner", k)
        return k

    @autolog.track(project="outer", sinks=["local"])
    def outer():
        inner()
        with autolog.run(project="other", config={"extra": 5}) as same:
            assert same is autolog.current_run()
            autolog.log("ctx", 1.0)
        return inner(2)

    assert outer() == 2
    [run] = autolog.list_runs()
    assert run.project == "outer"
    assert [v for _, v in run.metrics["inner"]] == [1.0, 2.0]
    assert run.metrics["ctx"] == [(0, 1.0)]
    assert run.config["extra"] == 5


def test_environment_provides_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLOG_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("AUTOLOG_PROJECT", "envproj")
    monkeypatch.setenv("AUTOLOG_SINKS", "local")
    with autolog.run() as run:
        autolog.log("a", 1)
    assert run.path.startswith(str(tmp_path / "elsewhere" / "envproj"))
    [data] = autolog.list_runs()  # list_runs honours AUTOLOG_DIR too
    assert data.project == "envproj" and data.metrics["a"] == [(0, 1.0)]
    # keyword arguments win over the environment
    with autolog.run(project="kw", dir=str(tmp_path / "kwdir")) as run2:
        pass
    assert run2.path.startswith(str(tmp_path / "kwdir" / "kw"))


def test_disabled_mode_writes_nothing_and_is_transparent(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLOG_MODE", "disabled")

    @autolog.track(dir=str(tmp_path / "d"))
    def train(x=1):
        autolog.log("a", 1.0)
        assert autolog.current_run() is None
        return x + 1

    assert train() == 2
    with autolog.run(dir=str(tmp_path / "d")) as r:
        r.log("a", 1.0)
        autolog.log("b", 2.0)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kwargs,needle", [
    ({"log_every": 0}, "log_every"),
    ({"log_every": "10"}, "log_every"),
    ({"mode": "sometimes"}, "mode"),
    ({"sinks": ["nope"]}, "available sinks: local"),
    ({"flush_secs": -1}, "flush_secs"),
    ({"tags": [1]}, "tags"),
    ({"redact": [3]}, "redact"),
])
def test_bad_options_name_the_argument(kwargs, needle, tmp_path):
    with pytest.raises((ValueError, TypeError), match=needle):
        autolog.run(dir=str(tmp_path / "runs"), **kwargs).finish()
    assert not (tmp_path / "runs").exists()  # nothing was written for a run that never started


def test_names_never_escape_the_runs_directory(tmp_path):
    root = tmp_path / "root"
    with autolog.run(project="../../escape", name="../../../etc/passwd", dir=str(root), sinks=["local"]) as run:
        pass
    assert os.path.realpath(run.path).startswith(str(root) + os.sep)
    data = autolog.read_run(run.path)
    assert data.name == "../../../etc/passwd"  # kept as a label, never used as a path
    assert sorted(os.listdir(root)) == ["escape"]


def _make_runs(root, n, queue):
    ids = []
    for _ in range(n):
        with autolog.run(project="p", dir=root, sinks=[]) as run:
            ids.append(run.id)
    queue.put(ids)


def test_run_ids_are_unique_across_processes_started_together(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_make_runs, args=(str(tmp_path), 15, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    ids = queue.get(timeout=120) + queue.get(timeout=120)
    for p in procs:
        p.join(60)
    assert len(ids) == 30 and len(set(ids)) == 30
    assert len(os.listdir(tmp_path / "p")) == 30


def test_function_defined_in_main_and_in_a_notebook_cell(tmp_path):
    from tests.helpers import child

    script = tmp_path / "my_script.py"
    script.write_text("import autolog\n@autolog.track(sinks=['local'])\ndef train(a=1):\n"
                      "    autolog.log('m', a)\n    return a\ntrain(3)\n")
    import subprocess
    import sys
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    [run] = autolog.list_runs()
    assert run.project == "my_script" and run.config == {"a": 3} and run.metrics["m"] == [(0, 3.0)]

    # A notebook cell: code compiled from a string into a module without __file__.
    proc = child("""
        import types, sys
        cell = types.ModuleType("__main__"); sys.modules["__main__"] = cell
        exec(compile("import autolog\\n@autolog.track(sinks=['local'], dir='nb')\\ndef cell_train(b=2):\\n    return b\\n"
                     "print(cell_train())", "<ipython-input-1>", "exec"), cell.__dict__)
    """, cwd=str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "2"
    [nb] = autolog.list_runs("nb")
    assert nb.project == "cell_train" and nb.status == "finished"
