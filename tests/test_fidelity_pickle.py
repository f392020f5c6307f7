"""A watched model pickles exactly as the same model unwatched: `torch.save(model)` during a watch
holds nothing of autolog and loads with the default `torch.load` (weights_only) under
`safe_globals` of the model's own classes, as pytorch/examples' word_language_model keeps its
best model; `copy.deepcopy` and torch.multiprocessing spawn work, and the copy has no autolog
hooks and trains normally."""
from __future__ import annotations

import copy
import io
import pickle

import torch
import torch.multiprocessing as mp
from torch import nn

import autolog
from autolog.capture import hooks


class RNNModel(nn.Module):
    """word_language_model's model, small."""

    def __init__(self, ntoken=20, ninp=8, nhid=8):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, 1)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, x):
        out, _ = self.rnn(self.drop(self.encoder(x)))
        return self.decoder(self.drop(out))


CLASSES = [RNNModel, nn.Dropout, nn.Embedding, nn.LSTM, nn.Linear]


def _step(model, opt):
    x = torch.randint(0, 20, (5, 3), generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(model(x).reshape(-1, 20), x.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _no_autolog_hooks(model) -> bool:
    return all(not hooks.has_autolog_hooks(m) for m in model.modules()) and not model._forward_pre_hooks


def test_torch_save_during_a_watch_equals_unwatched_and_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    model = RNNModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with autolog.run(sinks=["local"], dir=str(tmp_path)):
        autolog.watch(model, log="all")
        _step(model, opt)
        assert hooks.has_autolog_hooks(model)
        watched_bytes, watched_state = _save(model), _save(model.state_dict())
        with open(tmp_path / "model.pt", "wb") as f:
            torch.save(model, f)
        autolog.unwatch(model)
        unwatched_bytes, unwatched_state = _save(model), _save(model.state_dict())
    assert watched_bytes == unwatched_bytes  # byte for byte the unwatched pickle
    assert watched_state == unwatched_state
    assert b"autolog" not in watched_bytes
    with open(tmp_path / "model.pt", "rb") as f, torch.serialization.safe_globals(CLASSES):
        loaded = torch.load(f)  # weights_only=True, the default
    assert _no_autolog_hooks(loaded)
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_deepcopy_and_pickle_of_a_watched_model(tmp_path):
    torch.manual_seed(0)
    model = RNNModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with autolog.run(sinks=["local"], dir=str(tmp_path), log_every=1) as run:
        autolog.watch(model, log="all")
        _step(model, opt)
        twin = copy.deepcopy(model)
        clone = pickle.loads(pickle.dumps(model))
        for other in (twin, clone):
            assert _no_autolog_hooks(other)
            other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
            before = [p.detach().clone() for p in other.parameters()]
            _step(other, other_opt)  # trains normally (its optimizer step is the run's too)
            assert any(not torch.equal(a, p) for a, p in zip(before, other.parameters()))
        assert hooks.has_autolog_hooks(model)  # the original still watched
        _step(model, opt)
    back = autolog.read_run(run.path)
    assert back.status == "finished"
    assert [s for s, _ in back.metrics["grad_norm/decoder.weight"]][:1] == [0]


def _child(rank, model, out):
    assert _no_autolog_hooks(model)
    torch.manual_seed(0)  # the model's dropout: a spawned child's generator is seeded anew each time
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = _step(model, opt).item()
    for _ in range(5):
        last = _step(model, opt).item()
    torch.save({"first": first, "last": last, "hooks": len(model._forward_pre_hooks)}, out)


def test_spawn_child_gets_a_plain_model(tmp_path):
    torch.manual_seed(0)
    model = RNNModel()
    out = str(tmp_path / "child.pt")
    with autolog.run(sinks=["local"], dir=str(tmp_path)):
        autolog.watch(model)
        from multiprocessing.reduction import ForkingPickler

        assert b"autolog" not in bytes(ForkingPickler.dumps(model))  # what spawn sends the child
        mp.spawn(_child, args=(model, out), nprocs=1, join=True)
    result = torch.load(out)
    assert result["hooks"] == 0 and result["last"] < result["first"]


def test_the_reducer_goes_with_the_last_hook_and_chains(tmp_path):
    import copyreg

    assert RNNModel not in copyreg.dispatch_table
    model = RNNModel()
    with autolog.run(sinks=["local"], dir=str(tmp_path)):
        autolog.watch(model)
        assert RNNModel in copyreg.dispatch_table
        plain = RNNModel()  # same class, no hooks: pickled as always
        assert pickle.dumps(plain) == pickle.dumps(plain)
    assert RNNModel not in copyreg.dispatch_table

    calls = []

    def users_reducer(obj):
        calls.append(obj)
        return obj.__reduce_ex__(2)

    copyreg.dispatch_table[RNNModel] = users_reducer
    try:
        with autolog.run(sinks=["local"], dir=str(tmp_path)):
            autolog.watch(model)
            assert _no_autolog_hooks(copy.deepcopy(model)) and calls == [model]
        assert copyreg.dispatch_table[RNNModel] is users_reducer
    finally:
        del copyreg.dispatch_table[RNNModel]
