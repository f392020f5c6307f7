"""The user's exception always comes out of the call as the same object, whatever its ``__str__``
does; the run reads back `failed` with every point logged before it."""
from __future__ import annotations

import pytest
import torch

import autolog


class UnprintableError(Exception):
    def __str__(self):
        raise ValueError("str exploded")


class WeirdError(Exception):
    def __str__(self):
        return 42  # not even a str


def _train_then_raise(error, n=25):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(n):
        loss = model(torch.ones(4, 2)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise error


@pytest.mark.parametrize("error", [UnprintableError("x"), WeirdError(), ValueError("caf\udce9"),
                                   KeyboardInterrupt()])
def test_tracked_function_raises_the_same_object(tmp_path, error):
    @autolog.track(sinks=["local"], dir=str(tmp_path), log_every=10)
    def train():
        _train_then_raise(error)

    with pytest.raises(BaseException) as info:
        train()
    assert info.value is error
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == ("interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
    assert [s for s, _ in run.metrics["train/loss"]] == list(range(25))  # every point
    assert run.meta["exception_type"] == type(error).__qualname__
    if isinstance(error, (UnprintableError, WeirdError)):
        assert run.meta["exception_message"].startswith(f"<unprintable {type(error).__name__}")


def test_with_block_raises_the_same_object(tmp_path):
    error = UnprintableError()
    with pytest.raises(UnprintableError) as info:
        with autolog.run(sinks=["local"], dir=str(tmp_path), log_every=10) as run:
            _train_then_raise(error)
    assert info.value is error
    back = autolog.read_run(run.path)
    assert back.status == "failed" and len(back.metrics["train/loss"]) == 25
    assert "UnprintableError" in back.meta["traceback"]


def test_a_failing_end_of_run_never_replaces_the_result(tmp_path, capfd):
    @autolog.track(sinks=["local"], dir=str(tmp_path))
    def train():
        autolog.current_run()._on_finish.append(lambda run: (_ for _ in ()).throw(RuntimeError("hook")))
        return 7

    assert train() == 7
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == "finished"
    assert "while ending the run: RuntimeError: hook" in capfd.readouterr().err


def test_odd_return_values_keep_the_rest_of_the_summary(tmp_path):
    loop: dict = {"ok": 2.0}
    loop["self"] = loop
    result = {"score": 1.0, "caf\udce9": 3.0, "huge": 10**400, "loop": loop, "t": torch.tensor(1j)}

    @autolog.track(sinks=["local"], dir=str(tmp_path))
    def train():
        return result

    assert train() is result
    (run,) = autolog.list_runs(str(tmp_path))
    assert run.status == "finished"
    assert run.summary["score"] == 1.0 and run.summary["caf\\xe9"] == 3.0 and run.summary["loop/ok"] == 2.0
    assert "huge" not in run.summary and "t" not in run.summary
