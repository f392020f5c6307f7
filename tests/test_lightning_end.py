"""The Lightning callback tells where the run went when it ends: one line on stderr
(`autolog: run '<name>' <status>: <path>`), or the console sink's summary when that is on;
nothing on ranks other than 0 and nothing when disabled. Real Trainer, tiny model."""
import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog.integrations.lightning import AutologCallback


class Tiny(L.LightningModule):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.fail = fail

    def training_step(self, batch, batch_idx):
        if self.fail and batch_idx == 1:
            raise RuntimeError("tiny failure")
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback, module=None):
    data = DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module or Tiny(), data)


def _our_lines(err):
    return [line for line in err.splitlines() if line.startswith("autolog: run '")]


def test_fit_end_prints_one_line_with_status_and_directory(tmp_path, capsys):
    callback = AutologCallback(dir=tmp_path, sinks=["local"], name="tiny-fit")
    _fit(callback)
    [line] = _our_lines(capsys.readouterr().err)
    assert line == f"autolog: run 'tiny-fit' finished: {callback.run.path}"
    assert autolog.read_run(callback.run.path).status == "finished"


def test_a_failed_fit_says_failed(tmp_path, capsys):
    callback = AutologCallback(dir=tmp_path, sinks=["local"])
    with pytest.raises(RuntimeError, match="tiny failure"):
        _fit(callback, Tiny(fail=True))
    [line] = _our_lines(capsys.readouterr().err)
    assert line == f"autolog: run '{callback.run.name}' failed: {callback.run.path}"


def test_with_the_console_sink_its_summary_says_it_instead(tmp_path, capsys):
    callback = AutologCallback(dir=tmp_path, sinks=["local", "console"], name="tiny-console")
    _fit(callback)
    err = capsys.readouterr().err
    assert "autolog: run 'tiny-console' finished after" in err and callback.run.path in err
    assert f"finished: {callback.run.path}" not in err  # the summary alone, not our line too


def test_nothing_when_disabled_or_on_a_rank_other_than_zero(tmp_path, capsys, monkeypatch):
    _fit(AutologCallback(dir=tmp_path, sinks=["local"], mode="disabled"))
    monkeypatch.setenv("RANK", "1")  # a follower: rank 0 tells
    monkeypatch.setenv("WORLD_SIZE", "2")
    callback = AutologCallback(dir=tmp_path, sinks=["local"])
    _fit(callback)
    assert callback.run.is_follower
    assert _our_lines(capsys.readouterr().err) == []
    assert autolog.list_runs(tmp_path) == []
