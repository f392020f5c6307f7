"""Secrets are never written: values under secret-named parents are masked (the whole subtree),
every masked literal -- however short -- is scrubbed from exception text, tracebacks, texts, the
summary, meta (sink errors included) and stderr, and URL passwords are masked in any text. Checked
against every byte the run leaves on disk (run.json, events.alog, TensorBoard's event file, the
W&B offline .wandb file and W&B's debug logs) and everything printed."""
from __future__ import annotations

import os
import sys

import pytest
import torch

import autolog
from autolog.core.redact import MASK, Redactor
from autolog.sinks.base import Sink

SECRETS = {
    "pass": "hunter2pw",      # creds.credentials.pass
    "db": "dbsecret1",        # secrets.db
    "token": "tokval123",     # tokens.0.value
    "short": "abcde",         # password: 5 characters
    "url": "urlpw9",          # inside a sink's error message
    "argpw": "qwe",           # 3 characters, as a word
    "argv": "argvsecret9",    # --password on the command line
    "argv_url": "argvurl42",  # a URL password on the command line
}


class LeakySink(Sink):
    """A sink whose error message quotes a connection URL with its password."""

    name = "leaky"

    def write(self, batch):
        raise ConnectionError(f"cannot reach postgres://bob:{SECRETS['url']}@db.example.com:5432/runs")


def _all_bytes(root: str) -> list[tuple[str, bytes]]:
    out = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out.append((path, fh.read()))
    return out


@pytest.fixture
def leaked_run(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "--password", SECRETS["argv"],
                                      f"--db=postgres://u:{SECRETS['argv_url']}@h/x"])

    @autolog.track(project="redact", dir=str(tmp_path / "runs"), log_every=5,
                   sinks=["local", "tensorboard", "wandb", "console", "csv", LeakySink()])
    def train(creds, secrets, tokens, password, lr=0.1, note="plain"):
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(10):
            loss = model(torch.ones(3, 2)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        autolog.log_text("notes", f"logged in with {password} and {creds['credentials']['pass']}")
        autolog.current_run().update_config({"later": {"api_key": SECRETS["argpw"]}})
        raise PermissionError(f"login {password} / {secrets['db']} / {tokens[0]['value']} refused: "
                              f"see https://admin:{SECRETS['url']}@host/ and pin {SECRETS['argpw']}")

    with pytest.raises(PermissionError):
        train(creds={"credentials": {"pass": SECRETS["pass"], "n": 3}}, secrets={"db": SECRETS["db"]},
              tokens=[{"value": SECRETS["token"]}], password=SECRETS["short"])
    captured = capfd.readouterr()
    (run,) = autolog.list_runs(str(tmp_path / "runs"))
    return run, captured, tmp_path


def test_secret_named_parents_mask_the_whole_subtree(leaked_run):
    run, _captured, _tmp = leaked_run
    assert run.status == "failed"
    assert run.config["creds.credentials.pass"] == MASK and run.config["creds.credentials.n"] == MASK
    assert run.config["secrets.db"] == MASK and run.config["tokens.0.value"] == MASK
    assert run.config["password"] == MASK and run.config["later.api_key"] == MASK
    assert run.config["lr"] == 0.1 and run.config["note"] == "plain"
    assert run.meta["command"][-3:] == ["--password", MASK, f"--db=postgres://u:{MASK}@h/x"]
    assert len(run.metrics["train/loss"]) == 10


def test_masked_literals_are_scrubbed_from_exception_texts_and_meta(leaked_run):
    run, _captured, _tmp = leaked_run
    msg = run.meta["exception_message"]
    assert msg.startswith(f"login {MASK} / {MASK} / {MASK} refused: see https://admin:{MASK}@host/ and pin {MASK}")
    assert run.media[0]["text"] == f"logged in with {MASK} and {MASK}"
    first = run.meta["sink_errors"]["leaky"]["first_error"]
    assert f"postgres://bob:{MASK}@db.example.com" in first


def test_no_secret_in_any_byte_written_or_printed(leaked_run):
    run, captured, tmp = leaked_run
    files = _all_bytes(str(tmp))
    names = {os.path.basename(p) for p, _ in files}
    assert {"run.json", "events.alog", "metrics.csv", "debug.log"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert any(n.endswith(".wandb") for n in names)
    for label, secret in SECRETS.items():
        if len(secret) >= 4:  # 3-character secrets are scrubbed as words: checked below
            for path, data in files:
                assert secret.encode() not in data, f"{label} secret written in {path}"
            assert secret not in captured.err and secret not in captured.out, label
    assert "leaky" in captured.err and f"bob:{MASK}@" in captured.err  # told once, scrubbed
    assert f"pin {SECRETS['argpw']}" not in run.meta["exception_message"]
    assert f"pin {SECRETS['argpw']}".encode() not in b"".join(d for _p, d in files)


def test_short_literals_are_scrubbed_as_words_only():
    r = Redactor()
    r.config({"password": "ab", "api_key": "abcd"})
    assert r.text("ab crab abcdef ab.") == f"{MASK} crab {MASK}ef {MASK}."


def test_secret_paths():
    r = Redactor()
    flat = {"creds.user": "u", "max_tokens": 512, "tokenizer.name": "bpe", "auth.enabled": True,
            "db_pass": "pw", "num_pass": 3, "keys.0": "k", "secret_sauce.level": 2}
    out = r.config(flat)
    assert out == {"creds.user": MASK, "max_tokens": 512, "tokenizer.name": "bpe", "auth.enabled": True,
                   "db_pass": MASK, "num_pass": 3, "keys.0": "k", "secret_sauce.level": MASK}


def test_loose_key_names_mask_short_values_without_scrubbing_them_everywhere():
    r = Redactor()
    out = r.config({"sort_key": "name", "db_pass": "abcde", "openai_key": "longer-secret"})
    assert out == {"sort_key": MASK, "db_pass": MASK, "openai_key": MASK}
    assert r.text("model name abcde longer-secret") == f"model name {MASK} {MASK}"


def test_a_writer_error_is_scrubbed_in_meta_and_on_stderr(tmp_path, monkeypatch, capsys):
    """A record the writer cannot store: its error text (meta['writer_errors'] and the stderr line)
    has the run's masked literals and URL passwords scrubbed like every other message."""
    import numpy as np

    run_module = sys.modules["autolog.core.run"]

    def failing(self, record):
        raise OSError(f"cannot write with token {SECRETS['token']} to https://u:{SECRETS['url']}@nas/x")

    monkeypatch.setattr(run_module.Run, "_store_media", failing)
    with autolog.run(dir=str(tmp_path), config={"api_token": SECRETS["token"]}, log_every=100) as run:
        autolog.log("loss", 1.0, step=0)
        autolog.log_image("bad", np.zeros((4, 4, 3), dtype=np.uint8), step=0)
    err = capsys.readouterr().err
    first = autolog.read_run(run.path).meta["writer_errors"]["first_error"]
    assert "the writer could not handle a record" in err and MASK in first and MASK in err
    for text in (first, err):
        assert SECRETS["token"] not in text and SECRETS["url"] not in text
