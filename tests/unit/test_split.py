"""The split (test by content, train/val seeded) and the pickle-free image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vectorai.datasets import LabelledImages
from vectorai.errors import ConfigError, DatasetError
from vectorai.split import image_digest, image_digests, load_images, save_images, set_digest, split_indices, unseen_by

# 3 classes of different sizes: 100, 50, 20.
LABELS = np.repeat([0, 1, 2], [100, 50, 20])


def noise_images(count: int, seed: int = 0, shape: tuple[int, ...] = (6, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


DIGESTS = image_digests(noise_images(len(LABELS)))


def place(digest: str) -> float:
    """The documented rule: the digest's first 64 bits as a fraction of 2**64."""
    return int(digest[:16], 16) / 2 ** 64


def split(labels=LABELS, digests=DIGESTS, val=0.2, test=0.1, seed=7, stream=0, **kw):
    return split_indices(labels, digests, val_fraction=val, test_fraction=test, seed=seed, stream_size=stream,
                         **kw)


def test_split_is_stratified_disjoint_and_covering() -> None:
    train, val, test, stream = split(stream=10)
    combined = np.concatenate([train, val, test, stream])
    assert len(combined) == len(LABELS)
    assert set(combined.tolist()) == set(range(len(LABELS)))
    assert len(stream) == 10
    for part in (train, val, test):
        assert (np.bincount(LABELS[part], minlength=3) >= 1).all()
    # Validation is an exact share of each class; test is by content, so near its share.
    assert np.all(np.abs(np.bincount(LABELS[val], minlength=3) - np.array([100, 50, 20]) * 0.2) <= 1)
    assert len(test) == sum(place(d) < 0.1 for d in DIGESTS) > 0
    assert train.dtype == np.int64


def test_the_test_split_and_the_stream_are_the_same_for_every_seed() -> None:
    first = split(seed=1, stream=20)
    again = split(seed=1, stream=20)
    other = split(seed=2, stream=20)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert np.array_equal(first.test, other.test) and np.array_equal(first.stream, other.stream)
    assert not np.array_equal(first.train, other.train)
    assert set(first.train.tolist()) | set(first.val.tolist()) == set(other.train.tolist()) | set(other.val.tolist())
    # Not sorted by class: the training order mixes classes early on.
    assert len(set(LABELS[first.train[:20]].tolist())) > 1


def test_an_image_is_in_test_by_its_content_wherever_it_is() -> None:
    order = np.random.default_rng(3).permutation(len(LABELS))
    shuffled = split(labels=LABELS[order], digests=[DIGESTS[i] for i in order])
    assert sorted(order[shuffled.test].tolist()) == split().test.tolist()


def test_every_class_in_every_split_when_small() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    for seed in range(20):
        digests = image_digests(noise_images(len(labels), seed))
        train, val, test, _ = split(labels, digests, val=0.1, test=0.1, seed=seed)
        for part in (train, val, test):
            assert set(labels[part].tolist()) == {0, 1}


@pytest.mark.parametrize("val, test", [(0.0, 0.1), (0.1, 0.0), (-0.1, 0.2), (0.5, 0.5),
                                       (0.7, 0.4), (1.0, 0.1)])
def test_invalid_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        split(val=val, test=test, seed=0)


def test_class_too_small_is_named() -> None:
    labels = np.array([0] * 10 + [1, 1])
    with pytest.raises(DatasetError, match="'dogs' has 2 images"):
        split(labels, DIGESTS[:12], val=0.2, test=0.2, seed=0, class_names=["cats", "dogs"])


def test_a_stream_that_leaves_a_class_nothing_to_train_on_is_named() -> None:
    with pytest.raises(ConfigError, match="stream_size: 160 must be .* below the 1.. images outside"):
        split(stream=160)
    labels = np.array([0] * 100 + [1] * 4)
    with pytest.raises(ConfigError, match="stream_size: a stream sample of 60 leaves class '1'"):
        split(labels, DIGESTS[:104], val=0.3, test=0.1, stream=60)


def test_empty_labels() -> None:
    with pytest.raises(DatasetError, match="non-empty"):
        split(np.array([], dtype=np.int64), [], seed=0)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(30, 80), min_size=1, max_size=4),
       grown=st.lists(st.integers(0, 40), min_size=4, max_size=4),
       test_fraction=st.floats(0.05, 0.4), val_fraction=st.floats(0.05, 0.4),
       seeds=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
       stream=st.integers(0, 10), data=st.data())
def test_growing_a_dataset_never_moves_an_image_into_or_out_of_test(sizes, grown, test_fraction, val_fraction,
                                                                  seeds, stream, data):
    """For every dataset: the test split is the images under the line, whatever the seed, the
    validation share or the stream; new images never move an old one across it."""
    digest = st.binary(min_size=32, max_size=32).map(bytes.hex)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    digests = data.draw(st.lists(digest, min_size=len(labels), max_size=len(labels), unique=True))
    more_labels = np.repeat(np.arange(len(sizes)), grown[:len(sizes)])
    more = data.draw(st.lists(digest, min_size=len(more_labels), max_size=len(more_labels), unique=True)
                     .filter(lambda new: not set(new) & set(digests)))
    all_labels, all_digests = np.concatenate([labels, more_labels]), digests + more
    for lab, dig in ((labels, digests), (all_labels, all_digests)):
        for label in range(len(sizes)):
            under = sum(place(d) < test_fraction for d, l in zip(dig, lab) if l == label)
            count = int(np.sum(lab == label))
            # A class too small for the rule is documented to borrow the images nearest the line;
            # one the stream would leave nothing to train on is refused (tested above).
            assume(1 <= under <= count - max(1, round(count * val_fraction)) - 1 - stream)
    before = split(labels, digests, val=val_fraction, test=test_fraction, seed=seeds[0], stream=stream)
    after = split(all_labels, all_digests, val=val_fraction, test=test_fraction, seed=seeds[1], stream=stream)
    assert [digests[i] for i in before.test] == [d for d in digests if place(d) < test_fraction]
    assert {all_digests[i] for i in after.test} & set(digests) == {digests[i] for i in before.test}
    for result, dig in ((before, digests), (after, all_digests)):
        parts = [set(p.tolist()) for p in result]
        assert sum(map(len, parts)) == len(dig) and set().union(*parts) == set(range(len(dig)))


def test_the_digest_names_the_pixels_not_the_array() -> None:
    image = noise_images(1, shape=(5, 7, 3))[0]
    assert image_digest(image) == image_digest(np.asfortranarray(image)) == image_digest(image.copy())
    floats = image.astype("<f4")
    assert image_digest(floats) == image_digest(floats.astype(">f4"))
    assert len({image_digest(image), image_digest(floats), image_digest(image.reshape(7, 5, 3)),
                image_digest(image[..., :1]), image_digest(image[..., 0])}) == 5
    changed = image.copy()
    changed[4, 6, 2] ^= 1
    assert image_digest(changed) != image_digest(image)


def test_unseen_by_keeps_what_no_model_trained_on() -> None:
    digests = ["a", "b", "c", "d", "a"]
    keep, dropped = unseen_by(digests, {"candidate": {"b"}, "champion": {"a", "b", "x"}})
    assert keep.tolist() == [2, 3] and dropped == {"candidate": 1, "champion": 3}
    assert unseen_by(digests, {})[0].tolist() == [0, 1, 2, 3, 4]
    assert set_digest(["b", "a", "a"]) == set_digest(["a", "b"]) != set_digest(["a"])


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
    train = split(data.labels, DIGESTS[:10], val=0.2, test=0.2, seed=0).train
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


def test_the_split_rule_is_part_of_every_model_name_and_only_the_current_one_is_made(tmp_path):
    from tasks.data import SplitData
    from tasks.model import TrainModel
    from vectorai.split import SPLIT_RULE

    # A model trained on another rule's split has another name: it is never reused for this one.
    assert TrainModel().model_name != TrainModel(split_rule=SPLIT_RULE - 1).model_name
    assert SplitData().output().path != SplitData(split_rule=SPLIT_RULE - 1).output().path
    old = SPLIT_RULE - 1
    with pytest.raises(ConfigError, match=f"SplitData.split_rule: this code makes split rule {SPLIT_RULE}, not {old}"):
        SplitData(split_rule=old).run()
