"""Config capture and secret redaction."""
import argparse
import dataclasses
import os

import pydantic
import pytest
import torch
from omegaconf import OmegaConf

import autolog
from autolog.core.redact import Redactor, key_is_secret


@dataclasses.dataclass
class OptimCfg:
    lr: float = 0.1
    betas: tuple = (0.9, 0.999)


class ModelCfg(pydantic.BaseModel):
    width: int = 64
    act: str = "relu"


def test_arguments_and_containers_flattened(tmp_path):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(10, 2)), batch_size=4)

    @autolog.track(sinks=["local"], config={"extra": {"seed": 3}, "lr": 0.5})
    def train(model, loader, optim=OptimCfg(), args=argparse.Namespace(epochs=2, data={"root": "/d"}),
              pyd=ModelCfg(), omega=OmegaConf.create({"a": {"b": 1}, "ref": "${a.b}"}),
              weights=torch.ones(1000, 1000), loss_fn=torch.nn.functional.cross_entropy, *rest, **more):
        return None

    train(torch.nn.Linear(3, 2), loader, more_kw=[1, 2])
    config = autolog.list_runs()[0].config
    assert config["model"] == "Linear(params=8)"
    assert config["loader"] == "DataLoader(batch_size=4, dataset=TensorDataset, len=10)"
    assert config["optim.lr"] == 0.1 and config["optim.betas"] == [0.9, 0.999]
    assert config["args.epochs"] == 2 and config["args.data.root"] == "/d"
    assert config["pyd.width"] == 64 and config["pyd.act"] == "relu"
    assert config["omega.a.b"] == 1 and config["omega.ref"] == 1  # interpolation resolved
    assert config["weights"] == "Tensor(shape=[1000, 1000], dtype=float32, device=cpu)"
    assert config["loss_fn"] == "torch.nn.functional.cross_entropy"
    assert config["rest"] == [] and config["more_kw"] == [1, 2]
    assert config["extra.seed"] == 3
    assert config["lr"] == 0.5  # explicit config= wins over nothing named lr
    size = os.path.getsize(os.path.join(autolog.list_runs()[0].path, "run.json"))
    assert size < 10_000  # contents of tensors and modules are never stored


@pytest.mark.parametrize("key,value,masked", [
    ("api_key", "sk-live-123", True), ("password", 1234, True), ("hf_token", "abc", True),
    ("DB_PASSWORD", "x", True), ("aws.secret_access_key", "k", True), ("clientSecret", "z", True),
    ("credentials", {"user": "u"}, True), ("openai_key", "x", True), ("auth", "basic", True),
    ("max_tokens", 512, False), ("tokenizer", "gpt2", False), ("use_auth", True, False),
    ("sort_key", 3, False), ("lr", 0.1, False), ("author", "me", False), ("keyboard", "qwerty", False),
])
def test_secret_keys(key, value, masked):
    assert (Redactor().config({key: value})[key] == "***") == masked


@pytest.mark.parametrize("value", [
    "sk-proj-abcdefghijklmnop", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36, "xoxb-123456789012-abc",
    "hf_" + "b" * 34, "AIza" + "c" * 35, "sk_live_" + "d" * 24,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
])
def test_secret_values_in_any_key(value):
    out = Redactor().config({"note": f"use {value} here"})["note"]
    assert value not in out and "***" in out


def test_url_passwords_and_extra_patterns():
    r = Redactor(extra=[r"^internal\.", "(?i)dsn_host"])
    out = r.config({"db_url": "postgres://user:s3cret@host:5432/db", "internal.x": 5, "Dsn_Host": "h", "lr": 1})
    assert out == {"db_url": "postgres://user:***@host:5432/db", "internal.x": "***", "Dsn_Host": "***", "lr": 1}
    assert key_is_secret("x.y.api_key") == "strong" and key_is_secret("lr") is None


def test_secrets_never_reach_any_byte_under_the_run_directory(tmp_path, monkeypatch):
    secret, second = "sk-live-123", "hunter2hunter2"
    monkeypatch.setattr("sys.argv", ["train.py", "--password", second, f"--api-key={secret}"])

    @autolog.track(sinks=["local", "csv"])
    def train(lr=0.1, api_key=secret, db={"password": second}):
        autolog.log_text("notes", f"key was {secret}")
        autolog.log("loss", 1.0)
        raise RuntimeError(f"could not authenticate with {secret} / {second}")

    with pytest.raises(RuntimeError):
        train()
    [run] = autolog.list_runs()
    assert run.config["api_key"] == "***" and run.config["db.password"] == "***"
    assert run.status == "failed" and "***" in run.meta["exception_message"]
    for folder, _dirs, files in os.walk(run.path):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert secret.encode() not in data and second.encode() not in data, name
