"""Converting images and figures to uint8 HWC arrays (on the calling thread), and back from the
run's PNG files when a batch is read from the log."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


def _tensor_to_numpy(image: torch.Tensor, what: str) -> np.ndarray:
    kind = "meta-device" if image.is_meta else "quantized" if image.is_quantized else \
        str(image.layout) if image.layout != torch.strided else None
    if kind is not None:
        raise TypeError(f"{what}: image: expected a dense tensor with data, got a {kind} tensor")
    if image.is_complex():
        raise TypeError(f"{what}: image: expected a real-valued image, got a complex tensor")
    image = image.detach()
    if image.is_floating_point() and image.dtype not in (torch.float32, torch.float64):
        image = image.to(torch.float32)  # bfloat16/float16/float8: numpy has no (or a lossy) twin
    return image.cpu().resolve_conj().resolve_neg().numpy()


def image_array(image: Any, name: str = "image") -> np.ndarray:
    """A uint8 HWC array (1, 3 or 4 channels) from a PIL image, numpy array or tensor.

    Arrays may be HW, HWC or CHW (CHW when the first axis has 1, 3 or 4 entries and the last
    does not). Floating-point values (any float dtype: float16 and bfloat16 tensors are converted)
    are taken to lie in [0, 1], NaN as 0; integers in [0, 255]; booleans as 0/255.
    A tensor is copied to the host here: `log_image` is an explicit call, not the hot path.
    A bad image raises TypeError (not an image, or not numeric) or ValueError (shape), naming it.
    """
    what = f"autolog.log_image {name!r}"
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    elif isinstance(image, torch.Tensor):
        image = _tensor_to_numpy(image, what)
    if isinstance(image, (str, bytes)) or image is None:
        raise TypeError(f"{what}: image: expected an array, tensor or PIL image, got {type(image).__name__}")
    try:
        arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 -- the user's object could not become an array
        raise TypeError(f"{what}: image: expected an array, tensor or PIL image, got {type(image).__name__} "
                        f"({type(exc).__name__} converting it)") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what}: image: expected a numeric (bool, integer or float) image, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"{what}: image: expected an HW, HWC or CHW image, got shape {arr.shape}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what}: image: expected 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):  # huge values clip to 255, quietly
            arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
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
