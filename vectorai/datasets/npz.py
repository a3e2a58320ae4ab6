"""``.npz`` files of plain arrays: opened without ever unpickling."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from vectorai.datasets.labelled import LabelledImages, images_array, labels_and_names
from vectorai.errors import DatasetError


def read_npz(path: Path, required: Sequence[str],
             optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named arrays of an .npz, never unpickling; every failure names ``path``."""
    try:
        # Opened here, not by np.load, so a corrupt file's handle is closed on every path.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise DatasetError(path, "holds a single .npy array, not an .npz archive")
            missing = set(required) - set(archive.files)
            if missing:
                raise DatasetError(path, f"missing array(s) {sorted(missing)}; has "
                                         f"{sorted(archive.files)}")
            return {key: archive[key] for key in [*required, *optional] if key in archive.files}
    except DatasetError:
        raise
    except FileNotFoundError as err:
        raise DatasetError(path, "not found") from err
    except ValueError as err:
        # allow_pickle=False turns object arrays into ValueError; so does a non-npz file.
        raise DatasetError(path, f"not a valid .npz of plain arrays: {err}") from err
    except (OSError, EOFError, zlib.error, KeyError, zipfile.BadZipFile) as err:
        raise DatasetError(path, f"corrupt or truncated .npz: {err}") from err


def load_npz(path: Path) -> LabelledImages:
    """``x`` (N, H, W[, C]), ``y`` (N,), optional ``class_names``; never unpickles."""
    arrays = read_npz(path, ["x", "y"], ["class_names"])
    labels, class_names = labels_and_names(path, arrays["y"], arrays.get("class_names"))
    return LabelledImages(images_array(path, arrays["x"]), labels, class_names)
