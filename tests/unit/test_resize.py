"""vectorai.resize: the same pixels as Pillow's Image.resize, for every size, filter and pass
order, from any thread; Pillow itself when the extension is not there."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from vectorai import resize
from vectorai.resize import CONVOLUTIONS, pillow_resize, resize_uint8


def _pillow(pixels: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """The reference, written out here rather than through the module under test."""
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    out = np.asarray(image.resize((width, height), resample=resample, reducing_gap=None))
    return out.reshape(height, width, pixels.shape[2])


def test_the_extension_is_built_where_the_project_is_tested():
    """A checkout installed with `make setup` has a compiler (CI does): there, a build that failed
    quietly (setup.py marks it optional) must not leave every test on Pillow's path unnoticed."""
    if os.environ.get("CI") != "true" and not resize.accelerated():
        pytest.skip("vectorai._resample is not built here (optional outside CI)")
    assert resize.accelerated()


@settings(max_examples=300, deadline=None)
@given(in_h=st.integers(1, 90), in_w=st.integers(1, 90), out_h=st.integers(1, 90), out_w=st.integers(1, 90),
       channels=st.sampled_from([1, 3]), resample=st.sampled_from(sorted(CONVOLUTIONS | {0})),
       seed=st.integers(0, 2**32 - 1), smooth=st.booleans())
def test_every_size_filter_and_pass_order_gives_pillows_pixels(in_h, in_w, out_h, out_w, channels, resample,
                                                               seed, smooth):
    rng = np.random.default_rng(seed)
    if smooth:  # photo-like gradients as well as noise, where rounding ties are rarer
        coarse = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((in_w, in_h), Image.BICUBIC)
        pixels = np.ascontiguousarray(np.asarray(coarse)[:, :, :channels])
    else:
        pixels = rng.integers(0, 256, (in_h, in_w, channels), dtype=np.uint8)
    np.testing.assert_array_equal(resize_uint8(pixels, out_h, out_w, resample), _pillow(pixels, out_h, out_w, resample))


@pytest.mark.parametrize("size", [(480, 640), (240, 320), (600, 250), (224, 224), (2000, 60)])
def test_photo_sizes_to_a_model_size_match_pillow(size):
    """The sizes photos come in (after JPEG draft mode) and the shapes that pick each pass order,
    larger than the property's: the per-thread scratch buffers both kept and per call."""
    rng = np.random.default_rng(sum(size))
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size[::-1], Image.BICUBIC)
    pixels = np.clip(np.asarray(coarse) + rng.normal(0, 6, (*size, 3)), 0, 255).astype(np.uint8)
    for resample in sorted(CONVOLUTIONS):
        np.testing.assert_array_equal(resize_uint8(pixels, 224, 224, resample), _pillow(pixels, 224, 224, resample))


def test_threads_resizing_side_by_side_each_get_their_own_pixels():
    """Decoding threads call it at once, each with its own scratch: never another's pixels."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((240, 320), (120, 90), (333, 257))]
    expected = [_pillow(image, 64, 48, 2) for image in images]
    wrong: list[int] = []

    def work(index: int) -> None:
        for _ in range(40):
            if not np.array_equal(resize_uint8(images[index], 64, 48, 2), expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=work, args=(i % 3,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_without_the_extension_pillow_does_the_same_work(monkeypatch):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    accelerated = resize_uint8(pixels, 31, 23, 3)
    monkeypatch.setattr(resize, "_kernel", lambda: None)
    np.testing.assert_array_equal(resize_uint8(pixels, 31, 23, 3), accelerated)
    np.testing.assert_array_equal(pillow_resize(pixels, 31, 23, 3), accelerated)


@pytest.mark.parametrize("pixels, size, problem", [
    (np.zeros((4, 4, 3), np.float32), (2, 2), "float32"),
    (np.zeros((4, 4), np.uint8), (2, 2), "(4, 4)"),
    (np.zeros((4, 4, 4), np.uint8), (2, 2), "(4, 4, 4)"),
    (np.zeros((0, 4, 3), np.uint8), (2, 2), "(0, 4, 3)"),
    (np.zeros((4, 4, 3), np.uint8), (0, 2), "0x2"),
])
def test_what_it_cannot_resize_is_named(pixels, size, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        resize_uint8(pixels, *size)


def test_the_extension_checks_the_arrays_it_is_given():
    """Called directly (vectorai.resize checks first), it still refuses what would overrun."""
    kernel = pytest.importorskip("vectorai._resample")
    with pytest.raises(ValueError, match="same channels"):
        kernel.resample(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 1), np.uint8), 2, False)
    with pytest.raises(ValueError, match="uint8 array of shape"):
        kernel.resample(np.zeros((4, 4), np.uint8), np.zeros((2, 2), np.uint8), 2, False)
    with pytest.raises(ValueError, match="filter 0"):
        kernel.resample(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), 0, False)
    with pytest.raises((ValueError, BufferError, TypeError)):
        kernel.resample(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)[:, ::-1], 2, False)
