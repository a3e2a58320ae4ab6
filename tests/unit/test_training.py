"""The training input pipeline: augmentation is reproducible, new every epoch, and applied to the
training batches only (validation and test see the images as they are)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.datasets import LabelledImages
from vectorai.errors import ConfigError
from vectorai.tracking import default_tracking_uri
from vectorai.training import TrainConfig, augment_images, oversample, train_model, training_batches

pytestmark = pytest.mark.slow  # TensorFlow


def _digits(count: int, seed: int) -> np.ndarray:
    """``count`` 12x12 float images in [0, 1] with a bright off-centre bar, so any rotation or
    shift moves pixels."""
    rng = np.random.default_rng(seed)
    images = rng.random((count, 12, 12, 1), dtype=np.float32) * 0.1
    images[:, 2:9, 4:6, 0] = 1.0
    return images


def _batches(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_no_augmentation_when_every_range_is_zero():
    images = _digits(8, 0)
    still = TrainConfig(max_rotation_degrees=0.0, max_shift=0.0, max_zoom=0.0, max_shear=0.0)
    out = augment_images(images, [1, 2], still).numpy()
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_training_batches_are_reproducible_and_augmented_anew_every_epoch():
    images, labels = _digits(20, 1), np.arange(20) % 4
    config = TrainConfig(batch_size=5, image_height=12, image_width=12)  # 4 batches an epoch

    first = _batches(training_batches(images, labels, config), 8)
    again = _batches(training_batches(images, labels, config), 8)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)

    epochs = [first[:4], first[4:]]
    for epoch in epochs:  # every image once an epoch, with its own label, transformed
        assert sorted(np.concatenate([y for _, y in epoch]).tolist()) == sorted(labels.tolist())
        x = np.concatenate([x for x, _ in epoch])
        assert x.shape == images.shape and x.min() >= 0.0 and x.max() <= 1.0 + 1e-6
        assert not any(np.allclose(x[i], images[j], atol=1e-3) for i in range(len(x)) for j in range(len(images)))
    assert not np.allclose(np.concatenate([x for x, _ in epochs[0]]), np.concatenate([x for x, _ in epochs[1]]))

    other_seed = _batches(training_batches(images, labels, replace(config, seed=7)), 1)[0][0]
    assert not np.allclose(other_seed, first[0][0])


def test_validation_and_test_images_are_not_augmented(tmp_path):
    """The validation loss recorded for the last epoch, and the test loss, are those of the saved
    model on the images as they are: augmenting either would change them."""
    import keras

    rng = np.random.default_rng(3)

    def part(count: int) -> LabelledImages:
        labels = np.arange(count) % 2
        images = (rng.random((count, 12, 12)) * 60 + labels[:, None, None] * 120).astype(np.uint8)
        images[:, 2:9, 4:6] = 255  # something for the augmentation to move
        return LabelledImages(images, labels, ["dark", "light"])

    train, val, test = part(48), part(16), part(16)
    config = TrainConfig(epochs=2, batch_size=16, image_height=12, image_width=12, max_rotation_degrees=30.0,
                         max_shift=0.25)
    result = train_model(train, val, test, config, tmp_path / "out",
                         tracking_uri=default_tracking_uri(tmp_path / "mlflow"), experiment="augment",
                         artifact_dir=tmp_path / "artifacts", run_name="tiny")

    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    for images, labels, recorded in ((val.images, val.labels, result.history["val_loss"][-1]),
                                     (test.images, test.labels, result.metrics["test_loss"])):
        loss, _ = model.evaluate(images[..., None].astype(np.float32) / 255.0, labels, verbose=0)
        assert loss == pytest.approx(recorded, rel=1e-4, abs=1e-6)
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["config"]["max_rotation_degrees"] == 30.0 and summary["config"]["recipe"] == config.recipe


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 12))
def test_each_extra_image_counts_reviewed_weight_times_and_every_other_once(marks, weight):
    extra = np.array(marks, dtype=bool)
    counts = np.bincount(oversample(len(extra), extra, weight), minlength=len(extra))
    assert counts.tolist() == [weight if marked else 1 for marked in marks]
    assert oversample(len(extra), None, weight).tolist() == list(range(len(extra)))


def test_a_weight_below_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="reviewed_weight.*at least 1, got 0"):
        oversample(3, np.array([True, False, False]), 0)
