"""The old project's ``.p`` pickles, loaded only on explicit request: unpickling runs code."""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vectorai.datasets.labelled import LabelledImages, images_array, labels_and_names
from vectorai.errors import DatasetError

log = logging.getLogger(__name__)

LEGACY_PICKLE_SUFFIXES = frozenset({".p", ".pkl", ".pickle"})


def load_legacy_pickle(paths: Sequence[Path], allow_legacy_pickle: bool) -> LabelledImages:
    """The old project's ``.p`` files: a pickled dict (``x``/``y`` or ``features``/``labels``)
    or an ``(x, y)`` tuple. Several files are concatenated (e.g. train.p, valid.p, test.p).

    Unpickling runs whatever code the file names, so this needs ``allow_legacy_pickle``.
    """
    if not paths:
        raise DatasetError("<none>", "no legacy pickle files given")
    if not allow_legacy_pickle:
        raise DatasetError(paths[0], "legacy pickle files can run arbitrary code when loaded; "
                                     "convert them to .npz, or set allow_legacy_pickle=True "
                                     "if you trust them")
    images, labels, class_names = [], [], None
    for path in paths:
        message = f"{path}: loading a legacy pickle file (allow_legacy_pickle is set)"
        warnings.warn(message, stacklevel=2)
        log.warning(message)
        x, file_labels, file_names = _read_legacy_file(path)
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DatasetError(path, f"image shape {x.shape[1:]} differs from "
                                     f"{images[0].shape[1:]} in {paths[0].name}")
        # Files may each name only the classes up to their highest label; one list must
        # extend the other, or the label numbers mean different things in different files.
        if class_names is None:
            class_names = file_names
        else:
            shorter, longer = sorted((class_names, file_names), key=len)
            if longer[: len(shorter)] != shorter:
                raise DatasetError(path, f"class names {file_names} disagree with "
                                         f"{class_names} from {paths[0].name}")
            class_names = longer
        images.append(x)
        labels.append(file_labels)
    return LabelledImages(np.concatenate(images), np.concatenate(labels), class_names or [])


def _read_legacy_file(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One pickle's images, integer labels and class names."""
    try:
        with path.open("rb") as f:
            obj: Any = pickle.load(f)  # noqa: S301 -- explicitly opted in by the caller
    except Exception as err:  # a corrupt pickle can raise nearly anything
        raise DatasetError(path, f"corrupt or truncated pickle: {err}") from err
    if isinstance(obj, dict):
        x = obj.get("x", obj.get("features"))
        y = obj.get("y", obj.get("labels"))
        names = obj.get("class_names")
    elif isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
        x, y = obj[0], obj[1]
        names = obj[2] if len(obj) == 3 else None
    else:
        raise DatasetError(path, f"expected a dict with 'x'/'y' or an (x, y) tuple, got "
                                 f"{type(obj).__name__}")
    if x is None or y is None:
        raise DatasetError(path, "dict lacks 'x'/'y' (or 'features'/'labels')")
    file_labels, file_names = labels_and_names(path, y, names)
    x = images_array(path, x)
    if len(x) != len(file_labels):
        raise DatasetError(path, f"{len(x)} images but {len(file_labels)} labels")
    return x, file_labels, file_names
