"""Epochs from the training DataLoader: which loader it is, and when a new pass over it begins.

``torch.utils.data.DataLoader.__iter__`` is patched (`autolog.capture.patches`) while runs
capture; each call in a capturing run is `LoaderEpochs.on_iter` -- once per pass over a loader,
never per batch, so the training step pays nothing for it.

The training loader is the loader whose pass began last before a step of the run completes
(it is chosen at that step). A pass begun under ``torch.no_grad()`` or ``inference_mode`` (a
validation loop, the accuracy on the training set) never counts. From then on each new pass
over that loader -- or over another loader of the same dataset object, for loops that build
their DataLoader every epoch -- ends the epoch and begins the next; the first pass began epoch
0. Other loaders (validation, test) never count. A framework that counts its own epochs is left
to it: one that hands its batches to the capture (Lightning's callback), or whose training loop
is on the stack when the loader would be chosen (the HF Trainer's, `FRAMEWORK_LOOPS`).
"""
from __future__ import annotations

import sys
import weakref
from typing import Any

import torch


class LoaderEpochs:
    """One run's view of its DataLoaders (``capture.loaders``)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.loader: weakref.ref | None = None  # the training loader, once known
        self.dataset: weakref.ref | None = None  # its dataset (a loader made anew each epoch)
        self.candidate: tuple[weakref.ref, weakref.ref | None, int] | None = None  # (loader, dataset, step)
        self.off = False  # a framework counts the epochs itself

    def on_iter(self, loader: Any) -> None:
        """`loader.__iter__` was called in the run (a new pass begins)."""
        if self.off or not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return  # a pass under no_grad (validation, or accuracy on the training set) never counts
        if self.loader is not None:
            if self.loader() is loader or _same_dataset(self.dataset, loader):
                self.run.loader_epoch()
            return
        # the dataset too: a loader made in the `for` statement is gone once its iterator is
        self.candidate = (weakref.ref(loader), _dataset_ref(loader), self.run.step)

    def on_step(self) -> None:
        """The run's step is completing (before it advances): the candidate is the training
        loader; its first pass began epoch 0."""
        ref, dataset, step = self.candidate
        self.candidate = None
        if self.off or (ref() is None and (dataset is None or dataset() is None)):
            return
        if _framework_loop():
            self.off = True
            return
        self.loader, self.dataset = ref, dataset
        self.run.loader_epoch(start_step=step)


# Training loops of frameworks that log an ``epoch`` of their own (the HF Trainer's is fractional):
# (a module path part, the loop function's name). Looked for once per run, at the lock-in.
FRAMEWORK_LOOPS = (("transformers", "_inner_training_loop"),)


def _framework_loop(depth: int = 64) -> bool:
    """Whether the step completing now runs inside a framework's training loop."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        code = frame.f_code
        for module, function in FRAMEWORK_LOOPS:
            if code.co_name == function and module in code.co_filename:
                return True
        frame = frame.f_back
    return False


def _dataset_ref(loader: Any) -> weakref.ref | None:
    try:
        return weakref.ref(loader.dataset)
    except (AttributeError, TypeError):  # no dataset, or one that takes no weak reference
        return None


def _same_dataset(ref: weakref.ref | None, loader: Any) -> bool:
    if ref is None:
        return False
    dataset = ref()
    return dataset is not None and getattr(loader, "dataset", None) is dataset
