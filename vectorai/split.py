"""Stratified train/validation/test split, and a pickle-free ``.npz`` form of a split's images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from vectorai.datasets import LabelledImages, read_npz
from vectorai.errors import ConfigError, DatasetError

_FORMAT_VERSION = 1


def split_indices(
    labels: np.ndarray | Sequence[int],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled (train, val, test) index arrays holding each class in the same proportions.

    Every class gets at least one image in every split, so a class with fewer than three images
    is an error rather than a class the model silently never gets evaluated on. The same labels
    and seed always give the same split.
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

    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = len(members)
        n_val = max(1, round(count * val_fraction))
        n_test = max(1, round(count * test_fraction))
        if count - n_val - n_test < 1:
            name = class_names[label] if class_names is not None else str(label)
            raise DatasetError("labels", f"class {name!r} has {count} images; it needs at least "
                                         f"{n_val + n_test + 1} to put one in each of train, "
                                         "validation and test")
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val:n_val + n_test])
        parts[0].append(members[n_val + n_test:])
    # Shuffle across classes too, so batches drawn in order are not sorted by class.
    train, val, test = (rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


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
