import numpy as np
import pytest

from vectorai.errors import ImageError
from vectorai.preprocess import PreprocessSpec, preprocess_image, preprocess_images

GREY = PreprocessSpec(28, 28, 1)
COLOUR = PreprocessSpec(28, 28, 3)


def test_uint8_grey_is_scaled_to_unit_range():
    image = np.full((28, 28), 255, dtype=np.uint8)
    out = preprocess_images(image[None], GREY)
    assert out.shape == (1, 28, 28, 1) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0)


def test_colour_any_size_becomes_greyscale_at_model_size():
    image = np.zeros((50, 40, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red -> luma 0.299
    out = preprocess_image(image, GREY)
    assert out.shape == (28, 28, 1)
    assert out.mean() == pytest.approx(0.299, abs=1e-3)


def test_grey_becomes_colour_by_repeating():
    out = preprocess_image(np.full((10, 10), 0.5, dtype=np.float32), COLOUR)
    assert out.shape == (28, 28, 3)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_float_0_255_and_0_1_give_the_same_result():
    image = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.float32)
    np.testing.assert_allclose(preprocess_image(image, GREY), preprocess_image(image / 255.0, GREY), atol=1e-6)


def test_batch_and_single_paths_agree():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    batch = preprocess_images(images, GREY)
    single = np.stack([preprocess_image(im, GREY) for im in images])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_ragged_list_and_alpha_channel():
    images = [np.zeros((30, 30, 4), dtype=np.uint8), np.ones((12, 20), dtype=np.uint8) * 255]
    out = preprocess_images(images, COLOUR)
    assert out.shape == (2, 28, 28, 3)
    assert out[0].max() == 0.0 and out[1].min() == pytest.approx(1.0)


@pytest.mark.parametrize("image,reason", [
    (np.array([[np.nan, 0.0]]), "NaN"),
    (np.array([[-5.0, 300.0]]), "expected [0, 1] or [0, 255]"),
    (np.zeros((4, 4, 7)), "C in 1-4"),
    (np.zeros((4,)), "not (H, W)"),
])
def test_bad_images_raise_image_error(image, reason):
    with pytest.raises(ImageError, match=reason.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        preprocess_image(image, GREY)


def test_spec_rejects_unsupported_channels():
    with pytest.raises(ImageError, match="channels"):
        PreprocessSpec(28, 28, 2)


def test_the_model_input_of_uint8_pixels_is_exactly_the_unit_range_scaling():
    from vectorai.preprocess import as_model_input, to_unit_range

    every_value = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    scaled = as_model_input(every_value)
    assert scaled.dtype == np.float32 and np.array_equal(scaled, to_unit_range(every_value))
    assert scaled[0, 0, 0, 0] == 0.0 and scaled[0, -1, -1, 0] == 1.0
    floats = np.full((1, 2, 2, 1), 0.5, np.float32)
    assert as_model_input(floats) is floats
