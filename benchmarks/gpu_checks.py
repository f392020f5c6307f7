"""GPU checks of automatic capture: no host-device sync between hand-offs, values right.

    python -m benchmarks.gpu_checks [--steps N] [--windows W] [--json OUT]

Needs one CUDA device. A small model trains on the GPU under ``autolog.run`` with
``autolog.watch(model, log="all", log_every=1, graph=True)`` (gradient and weight norms,
update ratios, histograms and the NaN/Inf check at every step, the loss of two micro-batches
per step, optimizer hyperparameters, CUDA-event step times). Hand-offs happen only at explicit
``run.flush(wait=True)`` calls; between two of them, each window of steps runs under
``torch.cuda.set_sync_debug_mode("error")``, so any synchronising CUDA call made by autolog
(or by the loop) raises. The loop itself is sync-free: AdamW with foreach, bf16 autocast,
``clip_grad_norm_``, a cosine schedule, no ``.item()``.

Checked after each window: the sync debug mode raised nothing; ``train/loss`` equals the mean
of the two micro-batch losses collected in the loop (as device tensors, read after the window);
``grad_norm/*`` equals ``torch.linalg.vector_norm`` of the gradients (cloned in the loop);
``perf/step_time`` exists for the window's steps (from CUDA events). Once per on_nan policy
("warn", "raise"): a gradient made infinite by a tensor hook at step 1 (steps under the sync
debug mode) is named in ``meta["nonfinite"]`` and warned about (warn), or raises
`autolog.NonFiniteError` from the optimizer step whose hand-off follows it (raise).
``--device cpu`` rehearses the script without a GPU (it cannot detect syncs there).
Exit status 0 when every check passed; the findings are printed (and written to --json).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import autolog

DEVICE = "cuda"


def _sync_debug(mode) -> None:
    if DEVICE == "cuda":
        torch.cuda.set_sync_debug_mode(mode)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))


def _step(model, opt, sched, x, y, poison=False, clip=True):
    """One optimizer step of two micro-batches; returns (the two losses, gradient clones)."""
    opt.zero_grad(set_to_none=True)
    losses = []
    handle = model[4].weight.register_hook(lambda g: g * float("inf")) if poison else None
    for xs, ys in ((x[: len(x) // 2], y[: len(y) // 2]), (x[len(x) // 2:], y[len(y) // 2:])):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xs), ys)
        loss.backward()
        losses.append(loss.detach().clone())
    if handle is not None:
        handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    if clip:  # (clipping a non-finite total norm makes every gradient NaN: not in the alarm check)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0, foreach=True)
    opt.step()
    sched.step()
    return losses, grads


def check_window_loop(steps: int, windows: int, on_nan: str, root: str) -> dict:
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    model = _model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * windows + 10)
    x = torch.randn(64, 64, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    result: dict = {"policy": on_nan, "windows": [], "ok": True}
    with autolog.run(project="gpu-checks", dir=root, sinks=["local"], log_every=10**6, flush_secs=1e9) as run:
        autolog.watch(model, log="all", log_every=1, graph=True, on_nan=on_nan)
        for _ in range(3):  # warm-up, not checked: CUDA/cuBLAS initialisation may synchronise
            _step(model, opt, sched, x, y)
        run.flush(wait=True)
        for w in range(windows):
            first = run.step
            expected = {}
            _sync_debug("error")
            try:
                for _ in range(steps):
                    step = run.step
                    losses, grads = _step(model, opt, sched, x, y)
                    expected[step] = (losses, grads)
                error = None
            except RuntimeError as exc:  # raised by the sync debug mode
                error = f"{type(exc).__name__}: {exc}"
            finally:
                _sync_debug(0)
            run.flush(wait=True)
            result["windows"].append(_compare(autolog.read_run(run.path), expected, first, error))
    result["ok"] = all(w["ok"] for w in result["windows"])
    return result


def check_alarm(on_nan: str, root: str) -> dict:
    """A gradient made infinite at step 1 of a run with log_every=4: named in meta (warn), or
    NonFiniteError from the optimizer step whose hand-off follows (the end of step 3, raise).
    Steps 0-2 run under the sync debug mode; step 3 (the flush boundary) does not."""
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    model = _model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)
    x = torch.randn(64, 64, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    raised = sync_error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with autolog.run(project="gpu-alarm", dir=root, sinks=["local"], log_every=4, flush_secs=1e9) as run:
                autolog.watch(model, log=None, on_nan=on_nan)
                _step(model, opt, sched, x, y)  # warm-up (step 0), may initialise CUDA libraries
                _sync_debug("error")
                try:
                    _step(model, opt, sched, x, y, poison=True, clip=False)  # step 1
                    _step(model, opt, sched, x, y, clip=False)  # step 2
                except RuntimeError as exc:
                    sync_error = f"{type(exc).__name__}: {exc}"
                finally:
                    _sync_debug(0)
                _step(model, opt, sched, x, y, clip=False)  # step 3: its hand-off reads the findings
                run.flush(wait=True)
        except autolog.NonFiniteError as exc:
            raised = {"step": exc.step, "parameter": exc.parameter}
    finding = autolog.read_run(run.path).meta.get("nonfinite")
    want = {"step": 1, "parameter": "4.weight", "loss": False}
    ok = sync_error is None and finding == want
    if on_nan == "raise":
        ok = ok and raised == {"step": 1, "parameter": "4.weight"}
    else:
        ok = ok and any("step 1" in str(w.message) for w in caught)
    return {"policy": on_nan, "meta": finding, "raised": raised, "sync_error": sync_error, "ok": ok}


def _compare(data, expected, first, error) -> dict:
    loss = dict(data.metrics.get("train/loss", []))
    norms = {n: dict(s) for n, s in data.metrics.items() if n.startswith("grad_norm/")}
    step_time = dict(data.metrics.get("perf/step_time", []))
    worst_loss = worst_norm = 0.0
    missing = []
    for step, (losses, grads) in expected.items():
        want = float(sum(float(v) for v in losses) / len(losses))
        if step not in loss:
            missing.append(f"train/loss@{step}")
        else:
            worst_loss = max(worst_loss, abs(loss[step] - want) / max(abs(want), 1e-12))
        for name, g in grads.items():
            got = norms.get(f"grad_norm/{name}", {}).get(step)
            if got is None:
                missing.append(f"grad_norm/{name}@{step}")
                continue
            want_n = float(torch.linalg.vector_norm(g.float()))
            worst_norm = max(worst_norm, abs(got - want_n) / max(want_n, 1e-12))
        if step > 0 and step not in step_time:
            missing.append(f"perf/step_time@{step}")
    ok = error is None and not missing and worst_loss < 1e-5 and worst_norm < 1e-4
    return {"first_step": first, "steps": len(expected), "sync_error": error, "missing": missing[:10],
            "loss_rel_err": worst_loss, "grad_norm_rel_err": worst_norm,
            "step_times": [step_time.get(s) for s in expected][:3], "ok": ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per checked window")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--json", help="write the findings here")
    parser.add_argument("--device", default="cuda",
                        help="cuda (the check); cpu only rehearses the script's logic (no sync detection)")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device; nothing checked", file=sys.stderr)
        return 2
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (rehearsal: syncs not detected)"
    report = {"device": name, "torch": torch.__version__, "checks": []}
    with tempfile.TemporaryDirectory() as root:
        for policy in ("warn", "raise"):
            report["checks"].append(check_window_loop(args.steps, args.windows, policy, root))
            report["checks"].append(check_alarm(policy, root))
    report["ok"] = all(c["ok"] for c in report["checks"])
    report["seconds"] = round(time.perf_counter() - started, 2)
    text = json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
