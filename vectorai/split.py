"""The train/validation/test split, and a pickle-free ``.npz`` form of a split's images.

Whether an image is in the test split is a function of its content alone (a SHA-256 of its
pixels), so it is the same for every seed and every model of a dataset, and an image keeps its
place when the dataset grows: no model of a dataset ever trains on another one's test images.
Train and validation are drawn, seeded, from the rest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Collection, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from vectorai.datasets import LabelledImages, read_npz
from vectorai.errors import ConfigError, DatasetError

_FORMAT_VERSION = 1

#: How the split is chosen. It is part of every model's name (SplitData's ``split_rule``), so a
#: model trained on an older rule's split is never reused as if it had this one. 1: seeded test
#: split; 2: test split by content digest.
SPLIT_RULE = 2


class Split(NamedTuple):
    """Index arrays into the dataset: disjoint, and together every image."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    stream: np.ndarray


def image_digest(image: np.ndarray) -> str:
    """SHA-256 (hex) of an image's pixels, dtype and shape: equal exactly for equal images,
    whatever the array's memory layout or byte order."""
    array = np.asarray(image)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str} {array.shape}\n".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def image_digests(images: np.ndarray | Sequence[np.ndarray]) -> list[str]:
    return [image_digest(image) for image in images]


def set_digest(digests: Iterable[str]) -> str:
    """One SHA-256 naming a set of images (order and repeats do not matter)."""
    return hashlib.sha256("\n".join(sorted(set(digests))).encode()).hexdigest()


def unseen_by(digests: Sequence[str], seen: Mapping[str, Collection[str]]) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of the images that no set in ``seen`` holds (the images none of those models
    trained on), and how many of the images each set holds."""
    keep = [i for i, d in enumerate(digests) if not any(d in trained for trained in seen.values())]
    dropped = {who: sum(d in trained for d in digests) for who, trained in seen.items()}
    return np.array(keep, dtype=np.int64), dropped


def leave_out_seen(data: LabelledImages,
                   seen: Mapping[str, Collection[str] | None]) -> tuple[LabelledImages, dict[str, object]]:
    """``data`` less every image that a model in ``seen`` (name -> digests it trained on) trained
    on, and a record of the set kept: its size and digest, how many images each model's set
    held, and which models' sets are unknown (None: they may have seen some of what is kept)."""
    digests = image_digests(data.images)
    keep, held = unseen_by(digests, {who: trained for who, trained in seen.items() if trained is not None})
    return data.subset(keep), {
        "images": len(keep), "digest": set_digest(digests[i] for i in keep), "offered": len(digests),
        "trained_on": held, "training_set_unknown": sorted(who for who, trained in seen.items() if trained is None),
    }


def _positions(digests: Sequence[str]) -> np.ndarray:
    """Each image's place in [0, 1): the first 64 bits of its digest, uniform over contents."""
    return np.array([int(d[:16], 16) / 2.0 ** 64 for d in digests], dtype=np.float64)


def split_indices(
    labels: np.ndarray | Sequence[int],
    digests: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stream_size: int = 0,
    class_names: Sequence[str] | None = None,
) -> Split:
    """Split a dataset, class by class, into train, validation, test and a stream sample.

    Test: in each class, the images whose digest's place (see ``_positions``) is below
    ``test_fraction``, so membership depends on nothing but the image itself. Only a class so
    small that this gives it no test image, or too few left for training and validation, takes
    (or gives back) the images nearest the line instead. Stream: the ``stream_size`` other
    images nearest above the line (seed-independent too, and never trained on). Validation and
    training: a seeded draw from the rest, ``val_fraction`` of each class for validation. Every
    class has at least one image in train, validation and test.
    """
    for setting, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(setting, f"must be between 0 and 1 (exclusive), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("val_fraction + test_fraction",
                          f"must leave images for training, got {val_fraction} + {test_fraction}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError("labels", f"need a non-empty 1-D integer array, got {labels.dtype} "
                                     f"{labels.shape}")
    if len(digests) != len(labels):
        raise DatasetError("labels", f"{len(labels)} labels but {len(digests)} image digests")
    place = _positions(digests)
    test, rest, n_val = _test_by_place(labels, place, val_fraction, test_fraction, class_names)
    if not 0 <= stream_size < len(rest):
        raise ConfigError("SplitData.stream_size", f"{stream_size} must be at least 0 and below the "
                          f"{len(rest)} images outside the test split")
    by_place = rest[np.lexsort((rest, place[rest]))]
    stream, rest = by_place[:stream_size].astype(np.int64), by_place[stream_size:]
    train, val = _draw_train_val(labels, rest, n_val, seed, stream_size, class_names)
    return Split(train, val, test, stream)


def _class_name(class_names: Sequence[str] | None, label: int) -> str:
    return repr(class_names[label] if class_names is not None else str(label))


def _test_by_place(labels: np.ndarray, place: np.ndarray, val_fraction: float, test_fraction: float,
                   class_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """The test split (sorted indices), the rest (class by class, nearest the line first) and
    how many of each class go to validation."""
    test_parts, rest_parts, n_val = [], [], {}
    for label in np.unique(labels):
        # Nearest the line first; ties (equal images) by index, so the order is total.
        members = np.flatnonzero(labels == label)
        members = members[np.lexsort((members, place[members]))]
        count = len(members)
        n_val[label] = max(1, round(count * val_fraction))
        if count - n_val[label] - 1 < 1:
            raise DatasetError("labels", f"class {_class_name(class_names, label)} has {count} images; it "
                                         f"needs at least {n_val[label] + 2} to put one in each of train, "
                                         "validation and test")
        n_test = int(np.sum(place[members] < test_fraction))
        n_test = min(max(n_test, 1), count - n_val[label] - 1)
        test_parts.append(members[:n_test])
        rest_parts.append(members[n_test:])
    return np.sort(np.concatenate(test_parts)).astype(np.int64), np.concatenate(rest_parts), n_val


def _draw_train_val(labels: np.ndarray, rest: np.ndarray, n_val: dict[int, int], seed: int, stream_size: int,
                    class_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """The seeded draw of validation and training images from ``rest``, class by class."""
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.sort(rest[labels[rest] == label]))
        if len(members) < n_val[label] + 1:
            raise ConfigError("SplitData.stream_size", f"a stream sample of {stream_size} leaves class "
                              f"{_class_name(class_names, label)} {len(members)} images for training and "
                              f"validation; it needs {n_val[label] + 1}: lower stream_size")
        val_parts.append(members[:n_val[label]])
        train_parts.append(members[n_val[label]:])
    # Shuffle across classes too, so batches drawn in order are not sorted by class.
    train, val = (rng.permutation(np.concatenate(p)).astype(np.int64) for p in (train_parts, val_parts))
    return train, val


def save_images(path: Path, data: LabelledImages) -> None:
    """Write ``data`` to ``path`` (an .npz) atomically, with no pickled objects inside.

    Different-sized images go in one flat ``pixels`` array with their ``shapes`` and ``dtypes``.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(_FORMAT_VERSION),
        "labels": np.asarray(data.labels, dtype=np.int64),
        "class_names": np.array([str(n) for n in data.class_names], dtype=np.str_),
    }
    if isinstance(data.images, np.ndarray):
        arrays["images"] = data.images
    else:
        images = [np.asarray(im) for im in data.images]
        if any(im.ndim not in (2, 3) for im in images):
            raise DatasetError(path, "every image must be (H, W) or (H, W, C)")
        # Third column 0 means "no channel axis", so (H, W) and (H, W, 1) stay distinct.
        arrays["shapes"] = np.array(
            [(im.shape[0], im.shape[1], im.shape[2] if im.ndim == 3 else 0) for im in images],
            dtype=np.int64,
        ).reshape(-1, 3)
        arrays["dtypes"] = np.array([im.dtype.str for im in images], dtype=np.str_)
        common = np.result_type(*images) if images else np.uint8
        arrays["pixels"] = (np.concatenate([im.ravel() for im in images]).astype(common)
                            if images else np.empty(0, dtype=common))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same folder, so os.replace is an atomic rename; readers never see half.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_images(path: Path) -> LabelledImages:
    """Read what :func:`save_images` wrote; any inconsistency is a DatasetError naming ``path``."""
    path = Path(path)
    arrays = read_npz(path, ["labels", "class_names"],
                      ["format_version", "images", "pixels", "shapes", "dtypes"])
    if not ("images" in arrays or {"pixels", "shapes", "dtypes"} <= arrays.keys()):
        raise DatasetError(path, f"not written by save_images: has {sorted(arrays)}")
    version = int(arrays.get("format_version", np.array(_FORMAT_VERSION)))
    if version > _FORMAT_VERSION:
        raise DatasetError(path, f"written in format {version} by a newer vectorai; this one "
                                 f"reads up to {_FORMAT_VERSION}")
    labels = arrays["labels"].astype(np.int64)
    class_names = [str(n) for n in arrays["class_names"].tolist()]
    if "images" in arrays:
        images: np.ndarray | list[np.ndarray] = arrays["images"]
    else:
        images = _unflatten(path, arrays["pixels"], arrays["shapes"], arrays["dtypes"])
    if len(images) != len(labels):
        raise DatasetError(path, f"{len(images)} images but {len(labels)} labels")
    return LabelledImages(images, labels, class_names)


def _unflatten(path: Path, pixels: np.ndarray, shapes: np.ndarray,
               dtypes: np.ndarray) -> list[np.ndarray]:
    if shapes.ndim != 2 or shapes.shape[1] != 3 or len(dtypes) != len(shapes) \
            or (shapes < 0).any():
        raise DatasetError(path, f"malformed shapes {shapes.shape} / dtypes {dtypes.shape}")
    sizes = shapes[:, 0] * shapes[:, 1] * np.where(shapes[:, 2] == 0, 1, shapes[:, 2])
    if int(sizes.sum()) != pixels.size:
        raise DatasetError(path, f"shapes need {int(sizes.sum())} pixel values, file has "
                                 f"{pixels.size}")
    images = []
    for flat, (height, width, channels), dtype in zip(
        np.split(pixels, np.cumsum(sizes)[:-1]), shapes.tolist(), dtypes.tolist()
    ):
        shape = (height, width, channels) if channels else (height, width)
        images.append(flat.reshape(shape).astype(np.dtype(dtype), copy=False))
    return images
