"""Input checks at the call: what can never be stored is refused here, with a TypeError or
ValueError naming the argument, before anything is recorded -- so a bad value never costs
another one later in the pipeline.

Also the one text rule of autolog, `clean_text`: every text taken from the process or the user
(argv, cwd, environment, config keys and values, metric names, texts, exception messages, file
names) goes through it before it is stored.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np
import torch

STEP_MAX = 2**63 - 1  # steps are stored as int64
MAX_NESTING = 32  # nested dicts given to `log` (flattened with "/")


# -- text ----------------------------------------------------------------------------------------
def clean_text(value: str) -> str:
    """`value` as storable text: unchanged when it encodes as UTF-8 (lossless: every valid
    string, NULs and control characters included); otherwise each lone surrogate is escaped:
    U+DC80..U+DCFF (an undecodable byte that Python's ``surrogateescape`` kept, as in a
    non-UTF-8 argv, cwd, environment or file name) as ``\\xNN`` (the byte), any other lone
    surrogate as ``\\uXXXX``. Never raises; a non-str is first turned into one with `safe_str`.
    """
    if type(value) is not str:
        value = safe_str(value)
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    out = []
    for ch in value:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe_str(value: Any) -> str:
    """``str(value)`` that never raises: ``<unprintable T: E in __str__>`` when it does."""
    try:
        text = value if isinstance(value, str) else str(value)
        return str.__str__(text) if isinstance(text, str) else repr(type(text))
    except Exception as exc:  # noqa: BLE001 -- describing an object must never fail
        return f"<unprintable {_type_name(value)}: {type(exc).__name__} in __str__>"


def safe_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to `limit` characters, never raising."""
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError("__repr__ returned a non-string")
    except Exception as exc:  # noqa: BLE001
        return f"<unrepresentable {_type_name(value)}: {type(exc).__name__} in __repr__>"
    text = clean_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    try:
        return type(value).__name__
    except Exception:  # noqa: BLE001
        return "object"


# -- names and steps -----------------------------------------------------------------------------
def name(value: Any, what: str) -> str:
    """A metric (or media) name: a non-empty str without control characters, `clean_text`-ed."""
    if type(value) is str and value and value.isascii() and value.isprintable():
        return value  # the common case, fast
    if not isinstance(value, str) or not value:  # '' a TypeError too, as it always was
        raise TypeError(f"{what}: expected a non-empty str as the name, got {_type_name(value)} {safe_repr(value)}")
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise ValueError(f"{what}: name {safe_repr(value)}: expected text without control characters")
    return clean_text(str.__str__(value))


def step(value: Any, what: str = "autolog.log") -> int:
    """A step: an integer (int, numpy integer, or an integral float) in 0..2**63-1."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: step: expected a non-negative integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        step_ = int(value)
    elif isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"{what}: step: expected a finite integer, got {value!r}")
        if not float(value).is_integer():
            raise ValueError(f"{what}: step: expected an integer, got the non-integral {value!r}")
        step_ = int(value)
    else:
        raise TypeError(f"{what}: step: expected a non-negative integer, got {_type_name(value)} {safe_repr(value)}")
    if not 0 <= step_ <= STEP_MAX:
        raise ValueError(f"{what}: step: expected an integer in 0..2**63-1 (int64), got {step_}")
    return step_


# -- values --------------------------------------------------------------------------------------
def scalar(key: str, value: Any, what: str = "autolog.log") -> Any:
    """`value` as a Python float or a detached one-element tensor that the hand-off can copy;
    raises naming `key`. Tensors stay on their device (nothing is read here)."""
    if type(value) is float:
        return value
    if isinstance(value, torch.Tensor):
        return _tensor(key, value, what)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, np.integer)):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{what}: {key!r}: expected a number in float64 range, got an integer "
                             f"of {int(value).bit_length()} bits") from None
    if isinstance(value, (np.generic, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what}: {key!r}: expected a real number, got a numpy {arr.dtype} value")
        if arr.size != 1:
            raise ValueError(f"{what}: {key!r} must be a scalar: expected one element, got shape {arr.shape}")
        return float(arr.reshape(()))
    if value is None:
        raise TypeError(f"{what}: {key!r}: no value given (expected a number or a one-element tensor)")
    if isinstance(value, numbers.Real):  # Fraction, Decimal-like registered reals
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{what}: {key!r}: expected a number in float64 range, got {safe_repr(value)}") from None
        except Exception as exc:  # noqa: BLE001 -- a broken __float__ is the user's bad value
            raise TypeError(f"{what}: {key!r}: {_type_name(value)} could not be converted to float "
                            f"({type(exc).__name__})") from None
    raise TypeError(f"{what}: {key!r}: expected a number or a one-element tensor, "
                    f"got {_type_name(value)} {safe_repr(value)}")


def _tensor(key: str, value: torch.Tensor, what: str) -> torch.Tensor:
    if value.is_meta:
        raise TypeError(f"{what}: {key!r}: expected a tensor with data, got a meta-device tensor")
    if value.layout != torch.strided:
        raise TypeError(f"{what}: {key!r}: expected a dense (strided) tensor, got layout {value.layout}")
    if value.is_quantized:
        raise TypeError(f"{what}: {key!r}: expected a real-valued tensor, got a quantized {value.dtype} tensor")
    if value.is_complex():
        raise TypeError(f"{what}: {key!r}: expected a real number, got a complex tensor")
    if value.numel() != 1:
        raise ValueError(f"{what}: {key!r} must be a scalar: expected a tensor with one "
                         f"element, got shape {tuple(value.shape)}")
    return value.detach()


def metrics(data: Mapping[Any, Any] | str, value: Any, what: str = "autolog.log") -> list[tuple[str, Any]]:
    """The `(name, value)` pairs of a ``log`` call, every one checked before any is recorded.

    ``log("name", value)``, ``log({"name": value, "group": {"inner": value}})`` (nested
    dicts are flattened with "/", at most 32 deep) or ``log("group", {"inner": value})``
    (the dict's names under the prefix "group/", as Lightning's ``self.log`` does)."""
    if isinstance(data, str):
        key = name(data, what)
        if isinstance(value, Mapping):  # log("performance", {"acc": a}): "performance/acc"
            out_: list[tuple[str, Any]] = []
            _flatten(value, key, out_, 0, what)
            return out_
        return [(key, scalar(key, value, what))]
    if isinstance(data, Mapping):
        if value is not None:
            raise TypeError(f"{what}: pass either a dict or a name and a value, not both")
        out: list[tuple[str, Any]] = []
        _flatten(data, "", out, 0, what)
        return out
    raise TypeError(f"{what}: expected a dict of metrics or a name, got {_type_name(data)}")


def _flatten(data: Mapping[Any, Any], prefix: str, out: list[tuple[str, Any]], depth: int, what: str) -> None:
    if depth >= MAX_NESTING:
        raise ValueError(f"{what}: {prefix!r}: expected dicts nested at most {MAX_NESTING} deep")
    for key, value in data.items():
        if not (type(key) is str and key and key.isascii() and key.isprintable()):  # name()'s fast path
            key = name(key, what)
        full = f"{prefix}/{key}" if prefix else key
        if type(value) is float:  # the common case first: typing.Mapping's isinstance costs ~1 us
            out.append((full, value))
        elif isinstance(value, torch.Tensor):
            out.append((full, _tensor(full, value, what)))
        elif isinstance(value, Mapping):
            _flatten(value, full, out, depth + 1, what)
        else:
            out.append((full, scalar(full, value, what)))


def text(value: Any, what: str) -> str:
    """A text to record: a str, `clean_text`-ed."""
    if not isinstance(value, str):
        raise TypeError(f"{what}: text: expected a str, got {_type_name(value)}")
    return clean_text(str.__str__(value))


MAX_BINS = 512  # W&B's limit for a histogram; TensorBoard and the store take any number


def bins(value: Any, what: str) -> int:
    """A histogram's number of bins: an integer in 1..512."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what}: bins: expected an integer in 1..{MAX_BINS}, got {_type_name(value)} {safe_repr(value)}")
    if not 1 <= int(value) <= MAX_BINS:
        raise ValueError(f"{what}: bins: expected an integer in 1..{MAX_BINS}, got {int(value)}")
    return int(value)


def histogram_values(key: str, values: Any, what: str) -> torch.Tensor:
    """The values of a histogram as a tensor with at least one element: a real tensor (kept on
    its device, detached: nothing is read back), or a numpy array or a (nested) list of numbers
    (copied into a CPU float64 tensor, so changing them afterwards changes nothing)."""
    if isinstance(values, torch.Tensor):
        if values.is_meta:
            raise TypeError(f"{what}: {key!r}: expected a tensor with data, got a meta-device tensor")
        if values.layout != torch.strided or values.is_quantized or values.is_complex():
            raise TypeError(f"{what}: {key!r}: expected a dense real-valued tensor, got a "
                            f"{'complex' if values.is_complex() else values.layout} {values.dtype} tensor")
        tensor = values.detach()
    elif isinstance(values, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(values)
        except (ValueError, TypeError):  # ragged nesting
            raise TypeError(f"{what}: {key!r}: expected a rectangular array of numbers") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what}: {key!r}: expected real numbers, got a numpy {arr.dtype} array")
        tensor = torch.tensor(arr, dtype=torch.float64)
    else:
        raise TypeError(f"{what}: {key!r}: expected a tensor, a numpy array or a list of numbers, "
                        f"got {_type_name(values)} {safe_repr(values)}")
    if tensor.numel() == 0:
        raise ValueError(f"{what}: {key!r}: expected at least one value, got an empty {tuple(tensor.shape)}")
    return tensor
