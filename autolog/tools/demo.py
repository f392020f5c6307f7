"""`autolog demo`: a small model trained on synthetic data, tracked with no logging call."""
from __future__ import annotations

import torch
from torch import nn

import autolog


def make_data(n: int = 2048, dim: int = 20, classes: int = 4, seed: int = 0) -> torch.utils.data.TensorDataset:
    """A synthetic classification set: points around `classes` random centres."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2
    labels = torch.randint(0, classes, (n,), generator=gen)
    points = centres[labels] + torch.randn(n, dim, generator=gen)
    return torch.utils.data.TensorDataset(points, labels)


def train(lr: float = 3e-3, epochs: int = 5, batch_size: int = 64, hidden: int = 64, seed: int = 0) -> dict:
    """Train an MLP; returns the final validation accuracy."""
    torch.manual_seed(seed)
    data = make_data(seed=seed)
    train_set, val_set = torch.utils.data.random_split(data, [1792, 256], generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True)
    model = nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    watch = getattr(autolog, "watch", None)
    if watch is not None:
        watch(model, log="all")
    val_x = torch.stack([x for x, _ in val_set])
    val_y = torch.stack([y for _, y in val_set])
    acc = 0.0
    for _epoch in range(epochs):
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(val_x).argmax(1) == val_y).float().mean()
        autolog.log({"val/acc": acc})  # the one explicit call: a metric only the user knows
    return {"val_acc": float(acc)}


def run_demo(dir: str = "runs", epochs: int = 5, sinks: tuple[str, ...] | None = None) -> str:
    """Run the demo and return the run directory."""
    tracked = autolog.track(train, project="demo", dir=dir, sinks=sinks, log_every=10)
    tracked(epochs=epochs)
    return autolog.list_runs(dir, project="demo")[0].path
