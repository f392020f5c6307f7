"""Converting images and figures to uint8 HWC arrays (on the calling thread), and back from the
run's PNG files when a batch is read from the log."""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def image_array(image: Any, name: str = "image") -> np.ndarray:
    """A uint8 HWC array (1, 3 or 4 channels) from a PIL image, numpy array or tensor.

    Arrays may be HW, HWC or CHW (CHW when the first axis has 1, 3 or 4 entries and the last
    does not). Floating-point values are taken to lie in [0, 1]; integers in [0, 255].
    A tensor is copied to the host here: `log_image` is an explicit call, not the hot path.
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    elif hasattr(image, "detach") and hasattr(image, "cpu"):  # torch
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == object or arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"log_image {name!r}: expected an HW, HWC or CHW image, got shape {arr.shape}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"log_image {name!r}: expected 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"log_image {name!r}: expected a numeric image, got dtype {arr.dtype}")
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def figure_array(figure: Any, name: str = "figure") -> np.ndarray:
    """A matplotlib figure rendered to a uint8 RGBA array."""
    canvas = getattr(figure, "canvas", None)
    if canvas is None or not hasattr(figure, "savefig"):
        raise TypeError(f"log_figure {name!r}: expected a matplotlib Figure, got {type(figure).__name__}")
    if not hasattr(canvas, "buffer_rgba"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)


def decode_png(path: str) -> np.ndarray:
    """A PNG file as a uint8 HWC array (needs Pillow: ``autolog[media]``)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "LA", "RGB", "RGBA"):
            img = img.convert("RGBA" if "transparency" in img.info or "A" in img.mode else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_media(batch: Any, run_path: str, note: Any = None) -> Any:
    """`batch` read back from the log with its images and figures decoded from their PNG files
    (what a live sink got); a file that is missing or unreadable drops that record only, with a
    `note(message)`."""
    if not any(m.kind in ("image", "figure") and m.data is None for m in batch.media):
        return batch
    import dataclasses

    kept = []
    for record in batch.media:
        if record.kind not in ("image", "figure") or record.data is not None:
            kept.append(record)
            continue
        file = os.path.join(run_path, record.path) if record.path else ""
        try:
            kept.append(dataclasses.replace(record, data=decode_png(file)))
        except ImportError:
            if note:
                note(f"{record.kind}s skipped: decoding them needs Pillow (pip install 'autolog[media]')")
        except Exception as exc:  # noqa: BLE001 -- one unreadable file costs that record only
            if note:
                note(f"{record.kind} {record.name!r} at step {record.step}: cannot read {record.path!r}: {exc}; skipped")
    batch.media = kept
    return batch
