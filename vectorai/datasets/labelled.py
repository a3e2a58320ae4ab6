"""The one in-memory shape every loader returns, and the checks every loader's result passes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vectorai.errors import DatasetError


@dataclass
class LabelledImages:
    """Images with integer labels ``0..K-1`` and the K class names they index.

    ``images`` is one (N, H, W[, C]) array when every image has the same shape and dtype, else a
    list of (H, W[, C]) arrays (class folders of photos rarely share a size; resizing is the
    preprocessing step's job, not the loader's).
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabelledImages":
        """The images at ``indices``, in that order, with the same class names."""
        index = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list[np.ndarray] = self.images[index]
        else:
            images = [self.images[i] for i in index]
        return LabelledImages(images, self.labels[index], list(self.class_names))


def check_dataset(data: LabelledImages, source: str | Path) -> LabelledImages:
    """The invariants every consumer relies on, checked once at the end of every loader."""
    labels = np.asarray(data.labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(source, f"labels must be a 1-D integer array, got {labels.dtype} "
                                   f"{labels.shape}")
    if len(labels) == 0:
        raise DatasetError(source, "contains no images")
    if len(data.images) != len(labels):
        raise DatasetError(source, f"{len(data.images)} images but {len(labels)} labels")
    if len(data.class_names) < 2:
        raise DatasetError(source, f"only one class ({data.class_names}); a classifier needs "
                                   "at least two")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(data.class_names):
        raise DatasetError(source, f"labels span {low}..{high} but there are "
                                   f"{len(data.class_names)} class names")
    if len(np.unique(labels)) < 2:
        raise DatasetError(source, f"every image is labelled {data.class_names[low]!r}; "
                                   "a classifier needs at least two classes present")
    data.labels = labels.astype(np.int64, copy=False)
    return data


def visible(paths: Iterable[Path]) -> list[Path]:
    """Drop hidden entries (.DS_Store, .ipynb_checkpoints, editor swap files)."""
    return [p for p in paths if not p.name.startswith(".")]


def labels_and_names(source: Path, y: Any, names: Any) -> tuple[np.ndarray, list[str]]:
    """Integer labels plus names; string labels become indices into their sorted set."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(source, f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind in "US":
        class_names, labels = np.unique(y.astype(str), return_inverse=True)
        return labels.astype(np.int64), [str(n) for n in class_names]
    if y.dtype.kind not in "iu":
        raise DatasetError(source, f"labels must be integers or strings, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise DatasetError(source, f"label {int(y.min())} is negative")
    if names is None:
        count = int(y.max()) + 1 if len(y) else 0
        return y.astype(np.int64), [str(i) for i in range(count)]
    return y.astype(np.int64), [str(n) for n in np.asarray(names).tolist()]


def images_array(source: Path, x: Any) -> np.ndarray:
    """``x`` as a numeric (N, H, W[, C]) array, or a DatasetError naming ``source``."""
    x = np.asarray(x)
    if x.ndim not in (3, 4) or x.dtype.kind not in "uifb":
        raise DatasetError(source, f"images must be a numeric (N, H, W[, C]) array, got "
                                   f"{x.dtype} {x.shape}")
    return x
