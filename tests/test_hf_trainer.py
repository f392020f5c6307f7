"""The Hugging Face integration: a tiny randomly initialised BERT built from a config in code,
trained by a real ``Trainer`` with `AutologCallback`, read back from the local store and compared
with what the Trainer logged itself (``trainer.state.log_history``)."""
from __future__ import annotations

import math
import os
import pickle

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing from the hub, ever

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import autolog
from autolog.integrations.transformers import AutologCallback

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

HUB_TOKEN = "hf_secretsecretsecret123456"


class Boom(Exception):
    pass


def tiny_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def dataset(n: int = 48, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32, (n, 6), generator=g)
    return [{"input_ids": ids[i], "labels": int(ids[i].sum() % 2)} for i in range(n)]


def training_args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                   warmup_steps=2, max_grad_norm=0.2, learning_rate=1e-2, num_train_epochs=1, logging_steps=1,
                   eval_strategy="steps", eval_steps=3, save_strategy="no", report_to="none", disable_tqdm=True,
                   use_cpu=True, seed=0, hub_token=HUB_TOKEN)
    options.update(overrides)
    return TrainingArguments(**options)


def make_trainer(tmp_path, callbacks=(), model=None, **overrides) -> Trainer:
    data = dataset()
    return Trainer(model=model or tiny_model(), args=training_args(tmp_path, **overrides), train_dataset=data,
                   eval_dataset=data[:8], callbacks=list(callbacks))


def callback(tmp_path, **options) -> AutologCallback:
    return AutologCallback(project="hf", dir=tmp_path / "runs", sinks=["local"], **options)


def hf_series(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the Trainer logged, as autolog series: name -> (step, value), a value logged twice at
    one step once."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry["step"]
        for name, value in entry.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series = out.setdefault(name, [])
            if (step, float(value)) not in series:
                series.append((step, float(value)))
    return {name: sorted(points) for name, points in out.items()}


def test_every_trainer_log_value_is_recorded_at_its_global_step(tmp_path):
    cb = callback(tmp_path)
    trainer = make_trainer(tmp_path, [cb])
    trainer.train()
    run = autolog.read_run(cb.run.path)
    assert run.status == "finished"
    history = trainer.state.log_history
    assert trainer.state.global_step == 6  # 48 samples, batches of 4, 2 accumulated per step
    expected = hf_series(history)
    for name in ("loss", "grad_norm", "learning_rate", "epoch", "eval_loss", "train_runtime", "train_loss"):
        assert name in expected, name
    for name, points in expected.items():
        assert run.metrics[name] == points, name
    assert [s for s, _ in run.metrics["eval_loss"]] == [3, 6]  # eval every 3 steps
    assert run.metrics["epoch"][2:4] == [(3, 0.5), (4, 4 / 6)]  # logged with the eval at 3: once
    # the Trainer's numbers are autolog's own: at global step g, the optimizer step g - 1
    auto_norm = dict(run.metrics["train/grad_norm"])
    auto_loss = dict(run.metrics["train/loss"])
    auto_lr = dict(run.metrics["optim/lr"])
    for step, value in expected["grad_norm"]:
        assert auto_norm[step - 1] == value
    for step, value in expected["loss"]:  # logging_steps=1: the loss of that one step
        auto = auto_loss[step - 1]  # transformers 4.x logs it rounded to 4 digits
        assert math.isclose(auto, value, rel_tol=1e-6) or round(auto, 4) == value, step
    for step, value in expected["learning_rate"]:
        assert auto_lr[step - 1] == value  # warmup: 0 at the first step, then rising
    assert expected["learning_rate"][0] == (1, 0.0)
    assert max(v for _, v in expected["grad_norm"]) > 0.2  # clipping had something to clip
    assert run.meta["step"] == 6 and sorted(auto_loss) == list(range(6))
    assert any(name.startswith("grad_norm/bert.") for name in run.metrics)  # watch="gradients"


def test_config_from_training_arguments_and_model_secrets_redacted(tmp_path):
    cb = callback(tmp_path, config={"dataset": "toy"})
    model = tiny_model()
    trainer = make_trainer(tmp_path, [cb], model=model, max_steps=2, eval_strategy="no")
    trainer.train()
    run = autolog.read_run(cb.run.path)
    config = run.config
    assert config["args.learning_rate"] == 0.01 and config["args.gradient_accumulation_steps"] == 2
    assert config["args.hub_token"] == "***"
    assert config["model.hidden_size"] == 8 and config["model.num_hidden_layers"] == 1
    assert config["model.class"] == "BertForSequenceClassification"
    assert config["model.num_parameters"] == sum(p.numel() for p in model.parameters())
    assert config["model.trainable_parameters"] == config["model.num_parameters"]
    assert config["dataset"] == "toy"
    with open(os.path.join(cb.run.path, "run.json")) as fh:
        assert HUB_TOKEN not in fh.read()
    copy = pickle.loads(pickle.dumps(cb))  # hyperparameter search sends callbacks to workers
    assert copy.run is None and copy.run_options == cb.run_options


class RaiseAt(TrainerCallback):
    def __init__(self, step: int, exc: BaseException):
        self.step, self.exc = step, exc

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.exc


def test_an_exception_in_training_ends_the_run_failed_and_propagates_unchanged(tmp_path):
    cb = callback(tmp_path)
    boom = Boom("bad batch")
    trainer = make_trainer(tmp_path, [cb, RaiseAt(3, boom)], eval_strategy="no")
    with pytest.raises(Boom) as info:
        trainer.train()
    assert info.value is boom
    run = autolog.read_run(cb.run.path)
    assert run.status == "failed"
    assert run.meta["exception_type"] == "Boom" and run.meta["exception_message"] == "bad batch"
    assert [s for s, _ in run.metrics["loss"]] == [1, 2]  # the Trainer logs after on_step_end
    assert [s for s, _ in run.metrics["train/loss"]] == [0, 1, 2]  # the third step's loss is kept
    assert autolog.current_run() is None


def test_ctrl_c_ends_the_run_interrupted(tmp_path):
    cb = callback(tmp_path)
    trainer = make_trainer(tmp_path, [cb, RaiseAt(2, KeyboardInterrupt())], eval_strategy="no")
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert autolog.read_run(cb.run.path).status == "interrupted"


def test_inside_an_open_run_the_callback_joins_it(tmp_path):
    cb = callback(tmp_path, watch=None)
    with autolog.run(project="outer", dir=tmp_path / "runs", sinks=["local"]) as outer:
        trainer = make_trainer(tmp_path, [cb], max_steps=2, eval_strategy="no")
        trainer.train()
        assert outer.status == "running" and cb.run is outer  # train() did not end it
        autolog.log({"after": 1.0})
    run = autolog.read_run(outer.path)
    assert run.status == "finished" and run.metrics["loss"] == [(1, pytest.approx(run.metrics["loss"][0][1])),
                                                                (2, pytest.approx(run.metrics["loss"][1][1]))]
    assert run.config["args.max_steps"] == 2 and "after" in run.metrics
    assert len(autolog.list_runs(tmp_path / "runs")) == 1


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="watch"):
        AutologCallback(watch="everything")
    with pytest.raises(TypeError, match="watch_options"):
        AutologCallback(watch_options=[1])
