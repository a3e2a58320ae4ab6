"""A folder of class sub-folders of PNG/JPEG images: the sub-folders' sorted names are the classes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vectorai.datasets.labelled import LabelledImages, visible
from vectorai.errors import DatasetError
from vectorai.preprocess import stack_if_uniform

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def read_image_file(path: Path) -> np.ndarray:
    """One PNG/JPEG as (H, W) greyscale or (H, W, 3) colour, exactly as stored otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            # Phone photos store rotation in EXIF; apply it so the pixels are upright.
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise DatasetError(path, f"not a readable image: {err}") from err
    if image.mode in ("1", "LA"):
        image = image.convert("L")
    elif image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise DatasetError(path, f"{image.mode} pixels outside 0..65535")
        return array.astype(np.uint16)
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # RGBA, P, CMYK, YCbCr...
    return np.asarray(image)


def load_class_folders(folder: Path) -> LabelledImages:
    """One sub-folder per class (sorted names are the classes), PNG/JPEG files inside."""
    class_dirs = sorted((p for p in visible(folder.iterdir()) if p.is_dir()), key=lambda p: p.name)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in visible(class_dir.iterdir()) if p.is_file())
        before = len(images)
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            images.append(read_image_file(path))
            labels.append(label)
        if len(images) == before:
            raise DatasetError(class_dir, "class folder holds no .png/.jpg/.jpeg images")
    if skipped:
        log.warning("%s: ignored %d files that are not .png/.jpg/.jpeg", folder, skipped)
    if not images:
        raise DatasetError(folder, "no class sub-folders with images")
    return LabelledImages(stack_if_uniform(images), np.asarray(labels, dtype=np.int64),
                          [p.name for p in class_dirs])
