"""autolog: automatic, sync-free experiment logging for PyTorch training.

    @autolog.track
    def train(lr=1e-3, epochs=3): ...

Backends (tensorboard, wandb) are imported only when a sink that needs them is used.
"""
from autolog._version import __version__
from autolog.api import (current_run, epoch_end, log, log_figure, log_histogram, log_image, log_text,
                         name_optimizer, run, track)
from autolog.store.reader import RunData, list_runs, read_run
from autolog.core.run import Run
from autolog.capture.errors import NonFiniteError
from autolog.capture.watch import unwatch, watch

__all__ = ["__version__", "track", "run", "log", "log_histogram", "epoch_end", "log_image", "log_figure",
           "log_text", "current_run",
           "read_run", "list_runs", "RunData", "Run",
           "watch", "unwatch", "name_optimizer", "NonFiniteError"]
