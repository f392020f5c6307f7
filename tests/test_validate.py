"""Validation at the call (issue 10 point 5, issue 11 point 6): what can never be stored is refused
by `autolog.log` & co. with a TypeError/ValueError naming the key or argument, and a refused call
costs no other value: the run finishes and every valid point reads back from the store."""
from __future__ import annotations

import fractions
import warnings

import numpy as np
import pytest
import torch

import autolog
import autolog.pipeline.media
from autolog.core import validate


class BadRepr:
    def __repr__(self):
        raise RuntimeError("repr exploded")


BAD_VALUES = [
    ({"m": torch.empty((), device="meta")}, TypeError, "'m'.*meta"),
    ({"s": torch.tensor([1.0]).to_sparse()}, TypeError, "'s'.*sparse"),
    ({"q": "quantized"}, TypeError, "'q'.*quantized"),
    ({"c": torch.tensor(1 + 2j)}, TypeError, "'c'.*complex"),
    ({"big": 10**400}, ValueError, "'big'.*float64 range"),
    ({"r": BadRepr()}, TypeError, "'r'.*BadRepr.*unrepresentable"),
    ({"n": None}, TypeError, "'n'.*no value given"),
    ({"bad\x00name": 1.0}, ValueError, "control characters"),
    ({"deep": {"a": {"b": 1.0}}, "x": "text"}, TypeError, "'x'"),
    ({3: 1.0}, TypeError, "non-empty str"),
    ({"np": np.array(["a"])}, TypeError, "'np'.*numpy"),
]


@pytest.mark.parametrize("data,exc,needle", BAD_VALUES)
def test_a_bad_value_is_refused_naming_its_key_and_costs_nothing_else(tmp_path, data, exc, needle):
    if data.get("q") == "quantized":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates creating quantized tensors
            data = {"q": torch.quantize_per_tensor(torch.tensor([1.0]), 0.1, 0, torch.qint8)}
    with autolog.run(sinks=["local"], dir=str(tmp_path)) as run:
        autolog.log({"ok": 1.0}, step=0)
        with pytest.raises(exc, match=needle):
            autolog.log({"ok": 2.0, **data}, step=1)
        autolog.log({"ok": 3.0}, step=2)
    data_back = autolog.read_run(run.path)
    assert data_back.status == "finished"
    assert data_back.metrics["ok"] == [(0, 1.0), (2, 3.0)]  # the refused call recorded nothing


def test_name_and_value_form_says_no_value_given(autolog_run):
    with pytest.raises(TypeError, match="'val/acc': no value given"):
        autolog.log("val/acc")


@pytest.mark.parametrize("step,exc", [
    (2**63, ValueError), (-1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
    (1.5, ValueError), (np.float64(2.25), ValueError), (True, TypeError), ("3", TypeError),
    (np.uint64(2**64 - 1), ValueError),
])
def test_bad_steps_are_refused_naming_step(tmp_path, step, exc):
    with autolog.run(sinks=["local"], dir=str(tmp_path)) as run:
        autolog.log({"a": 1.0}, step=0)
        with pytest.raises(exc, match="step"):
            autolog.log({"a": 2.0}, step=step)
        with pytest.raises(exc, match="step"):
            autolog.log_text("t", "x", step=step)
        with pytest.raises(exc, match="step"):
            autolog.log_image("i", np.zeros((2, 2)), step=step)
        for _ in range(10):
            autolog.log({"loss": 0.5})
    back = autolog.read_run(run.path)
    assert back.status == "finished"
    assert back.metrics["a"] == [(0, 1.0)]
    assert len(back.metrics["loss"]) == 10 and back.media == []


def test_good_steps_and_values_are_stored_exactly(tmp_path):
    with autolog.run(sinks=["local"], dir=str(tmp_path)) as run:
        autolog.log({"a": 1}, step=2**63 - 1)
        autolog.log({"b": np.int32(7), "c": fractions.Fraction(1, 4), "d": True}, step=3.0)
        autolog.log({"e": torch.tensor([0.5], dtype=torch.bfloat16)}, step=np.int64(4))
    back = autolog.read_run(run.path)
    assert back.status == "finished"
    assert back.metrics["a"] == [(2**63 - 1, 1.0)]
    assert back.metrics["b"] == [(3, 7.0)] and back.metrics["c"] == [(3, 0.25)] and back.metrics["d"] == [(3, 1.0)]
    assert back.metrics["e"] == [(4, 0.5)]


def test_nesting_is_bounded_with_a_clear_error(autolog_run):
    deep: dict = {}
    cur = deep
    for _ in range(2000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(ValueError, match="nested at most 32 deep"):
        autolog.log(deep)
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="nested"):
        autolog.log(loop)


def test_media_arguments_are_checked(autolog_run):
    with pytest.raises(TypeError, match="autolog.log_text 'notes': text: expected a str"):
        autolog.log_text("notes", 3)
    with pytest.raises(TypeError, match="log_image: expected a non-empty str"):
        autolog.log_image(None, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="log_text: name .*control"):
        autolog.log_text("a\nb", "x")


def test_clean_text_is_lossless_for_valid_text_and_escapes_lone_surrogates():
    assert validate.clean_text("café ☕ \x00\t") == "café ☕ \x00\t"
    assert validate.clean_text("caf\udce9.csv") == "caf\\xe9.csv"  # a surrogateescape'd byte
    assert validate.clean_text("bad\ud800") == "bad\\ud800"
    assert validate.clean_text("\ud83d\ude00") == "\\ud83d\\ude00"  # a pair given as two code points
    class BadStr:
        def __str__(self):
            raise ValueError("no")
    assert validate.clean_text(BadStr()) == "<unprintable BadStr: ValueError in __str__>"


def test_bf16_and_fp16_images_are_converted_like_float32(tmp_path):
    from PIL import Image

    img = torch.linspace(0, 1, 4 * 5 * 3).reshape(3, 4, 5)  # CHW, values representable in bf16
    with autolog.run(sinks=["local"], dir=str(tmp_path)) as run:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            autolog.log_image(f"img/{str(dtype).split('.')[-1]}", img.to(dtype).to(torch.float32).to(dtype))
    back = autolog.read_run(run.path)
    assert back.status == "finished"
    arrays = {m["name"]: np.asarray(Image.open(f"{run.path}/{m['path']}")) for m in back.media}
    assert set(arrays) == {"img/float32", "img/bfloat16", "img/float16"}
    ref = np.asarray(autolog.pipeline.media.image_array(img.to(torch.bfloat16).float()))
    for name, arr in arrays.items():
        assert arr.shape == (4, 5, 3), name
        assert np.abs(arr.astype(int) - ref.astype(int)).max() <= 1, name


@pytest.mark.parametrize("image,exc,needle", [
    ("not an image", TypeError, "expected an array, tensor or PIL image, got str"),
    (None, TypeError, "got NoneType"),
    (torch.zeros(2, 2, dtype=torch.complex64), TypeError, "complex"),
    (torch.empty(2, 2, device="meta"), TypeError, "meta-device"),
    (torch.zeros(2, 2).to_sparse(), TypeError, "sparse"),
    (np.array([["a", "b"]]), TypeError, "numeric"),
    (np.zeros((2, 3, 4, 5)), ValueError, "HW, HWC or CHW"),
    (np.zeros((2, 2, 7)), ValueError, "1, 3 or 4 channels"),
    (np.zeros((0, 3)), ValueError, "HW, HWC or CHW"),
])
def test_bad_images_name_the_argument(autolog_run, image, exc, needle):
    with pytest.raises(exc, match=f"autolog.log_image 'pic': image: .*{needle}"):
        autolog.log_image("pic", image)


def test_extreme_float_images_clip_without_numpy_warnings(autolog_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr = autolog.pipeline.media.image_array(np.array([[1e308, -1e308], [np.nan, np.inf]]))
    assert arr[:, :, 0].tolist() == [[255, 0], [0, 255]]
