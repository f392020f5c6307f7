"""Epochs from the training DataLoader: which loader it is, and when a new pass over it begins.

``torch.utils.data.DataLoader.__iter__`` is patched (`autolog.capture.patches`) while runs
capture; each call in a capturing run is `LoaderEpochs.on_iter` -- once per pass over a loader,
never per batch, so the training step pays nothing for it.

The training loader is the last loader whose pass began with gradients enabled before the run's
first completed step (a loader iterated under ``torch.no_grad()`` or ``inference_mode`` -- a
validation loop -- is never it). From then on each new pass over that loader ends the epoch and
begins the next; the first pass began epoch 0. Other loaders (validation, test) never count.
A framework that hands its batches to the capture (Lightning's callback) counts its own epochs:
then no loader is followed.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch


class LoaderEpochs:
    """One run's view of its DataLoaders (``capture.loaders``)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.loader: weakref.ref | None = None  # the training loader, once known
        self.candidate: tuple[weakref.ref, int] | None = None  # (loader, run step at its pass)
        self.off = False  # a framework counts the epochs itself

    @property
    def pending(self) -> bool:
        """A candidate waits for the run's first step to become the training loader."""
        return self.candidate is not None and self.loader is None

    def on_iter(self, loader: Any) -> None:
        """`loader.__iter__` was called in the run (a new pass begins)."""
        if self.off:
            return
        if self.loader is not None:
            if self.loader() is loader:
                self.run._epoch_begins()
            return
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.candidate = (weakref.ref(loader), self.run.step)

    def on_step(self) -> None:
        """The run's step is completing (before it advances): the candidate is the training
        loader; its first pass began epoch 0."""
        ref, step = self.candidate
        self.candidate = None
        if self.off or ref() is None:
            return
        self.loader = ref
        self.run._epoch_begins(start_step=step)
