"""Stratified splitting and the pickle-free image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vectorai.datasets import LabelledImages
from vectorai.errors import ConfigError, DatasetError
from vectorai.split import load_images, save_images, split_indices

# 3 classes of different sizes: 100, 50, 20.
LABELS = np.repeat([0, 1, 2], [100, 50, 20])


def test_split_is_stratified_disjoint_and_covering() -> None:
    train, val, test = split_indices(LABELS, 0.2, 0.1, seed=7)
    combined = np.concatenate([train, val, test])
    assert len(combined) == len(LABELS)
    assert set(combined.tolist()) == set(range(len(LABELS)))
    for part, fraction in ((train, 0.7), (val, 0.2), (test, 0.1)):
        counts = np.bincount(LABELS[part], minlength=3)
        assert (counts >= 1).all()
        expected = np.array([100, 50, 20]) * fraction
        assert np.all(np.abs(counts - expected) <= 1)
    assert train.dtype == np.int64


def test_split_is_shuffled_and_seeded() -> None:
    first = split_indices(LABELS, 0.2, 0.1, seed=1)
    again = split_indices(LABELS, 0.2, 0.1, seed=1)
    other = split_indices(LABELS, 0.2, 0.1, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    # Not sorted by class: the training order mixes classes early on.
    assert len(set(LABELS[first[0][:20]].tolist())) > 1


def test_every_class_in_every_split_when_small() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    train, val, test = split_indices(labels, 0.1, 0.1, seed=0)
    for part in (train, val, test):
        assert set(labels[part].tolist()) == {0, 1}


@pytest.mark.parametrize("val, test", [(0.0, 0.1), (0.1, 0.0), (-0.1, 0.2), (0.5, 0.5),
                                       (0.7, 0.4), (1.0, 0.1)])
def test_invalid_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        split_indices(LABELS, val, test, seed=0)


def test_class_too_small_is_named() -> None:
    labels = np.array([0] * 10 + [1, 1])
    with pytest.raises(DatasetError, match="'dogs' has 2 images"):
        split_indices(labels, 0.2, 0.2, seed=0, class_names=["cats", "dogs"])


def test_empty_labels() -> None:
    with pytest.raises(DatasetError, match="non-empty"):
        split_indices(np.array([], dtype=np.int64), 0.2, 0.2, seed=0)


def test_save_load_uniform_round_trip(tmp_path: Path) -> None:
    data = LabelledImages(np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
                          np.array([1, 0]), ["cat", "dög/ünïcode"])
    path = tmp_path / "sub" / "train.npz"
    save_images(path, data)
    loaded = load_images(path)
    assert isinstance(loaded.images, np.ndarray)
    assert np.array_equal(loaded.images, data.images) and loaded.images.dtype == np.uint8
    assert loaded.labels.tolist() == [1, 0] and loaded.labels.dtype == np.int64
    assert loaded.class_names == data.class_names
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]  # no temp file left
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)


def test_save_load_ragged_round_trip(tmp_path: Path) -> None:
    images = [np.full((3, 5), 7, dtype=np.uint8), np.ones((2, 2, 3), dtype=np.uint8),
              np.full((4, 1, 1), 9, dtype=np.uint8), np.full((2, 2), 1000, dtype=np.uint16)]
    data = LabelledImages(images, np.array([0, 1, 1, 0]), ["a", "b"])
    path = tmp_path / "val.npz"
    save_images(path, data)
    with np.load(path, allow_pickle=False) as archive:
        assert "pixels" in archive.files and archive["pixels"].ndim == 1
    loaded = load_images(path)
    assert isinstance(loaded.images, list)
    for got, want in zip(loaded.images, images):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got, want)


def test_subset_then_save(tmp_path: Path) -> None:
    data = LabelledImages(np.arange(30, dtype=np.uint8).reshape(10, 3, 1), np.arange(10) % 2,
                          ["even", "odd"])
    train, _, _ = split_indices(data.labels, 0.2, 0.2, seed=0)
    save_images(tmp_path / "train.npz", data.subset(train))
    assert len(load_images(tmp_path / "train.npz")) == len(train)


def test_load_images_rejects_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    with pytest.raises(DatasetError, match="missing.npz"):
        load_images(missing)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(DatasetError, match="missing array"):
        load_images(foreign)
    good = tmp_path / "good.npz"
    save_images(good, LabelledImages([np.zeros((2, 2)), np.zeros((3, 3))], np.array([0, 1]),
                                     ["a", "b"]))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DatasetError, match="truncated.npz"):
        load_images(truncated)
    inconsistent = tmp_path / "inconsistent.npz"
    np.savez(inconsistent, labels=np.array([0, 1]), class_names=np.array(["a", "b"]),
             pixels=np.zeros(5), shapes=np.array([[2, 2, 0], [3, 3, 0]]),
             dtypes=np.array(["<f8", "<f8"]))
    with pytest.raises(DatasetError, match="need 13 pixel values"):
        load_images(inconsistent)
