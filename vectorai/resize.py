"""Pillow's antialiased resize of 8-bit images, in a fraction of its CPU where it can.

Resizing a photo to a model's size took as much CPU as decoding it (0.58 ms from 320x240 to
224x224 on the 2-core VM). ``vectorai._resample`` (C, built with the package when a compiler is
there) computes the same pixels, bit for bit, in 0.24 ms: Pillow's filters and fixed-point
arithmetic, each pass adding whole lines with vector instructions. Everything here checks its
arguments and falls back to Pillow itself when the extension is missing, the filter is not one
it has, or the installed Pillow resizes differently (checked once, on first use).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

#: Pillow's filter numbers (Image.Resampling) that the extension computes: LANCZOS, BILINEAR,
#: BICUBIC, BOX, HAMMING. NEAREST is not a convolution; Pillow 13's MKS filters are left to it.
CONVOLUTIONS = frozenset({1, 2, 3, 4, 5})


def _pillow_major() -> int:
    import PIL

    try:
        return int(PIL.__version__.split(".")[0])
    except ValueError:
        return 0


#: Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as
#: the width; before, always the horizontal one. The order changes rounding between passes.
_VERTICAL_FIRST_WHEN_TALLER = _pillow_major() >= 13


def _vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    return _VERTICAL_FIRST_WHEN_TALLER and in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2


def pillow_resize(pixels: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """``Image.resize`` of an (H, W, C) uint8 array (C 1 or 3), as an (height, width, C) array."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
    resized = np.asarray(image.resize((width, height), resample=resample, reducing_gap=None))
    return resized.reshape(height, width, pixels.shape[2])


@functools.lru_cache(maxsize=1)
def _kernel():
    """The extension's ``resample``, once it has matched Pillow on images that take both pass
    orders and every filter; None (Pillow does the work) when it is missing or does not match.
    Checked on first use, not at import: 20 ms that a process resizing nothing never spends."""
    try:
        from vectorai._resample import resample
    except ImportError:
        log.debug("vectorai._resample is not built; resizing with Pillow")
        return None
    rng = np.random.default_rng(0)
    for in_h, in_w, out_h, out_w in ((37, 29, 11, 41), (23, 31, 17, 13), (16, 16, 24, 9), (40, 12, 40, 5)):
        for channels in (1, 3):
            image = rng.integers(0, 256, (in_h, in_w, channels), dtype=np.uint8)
            for resample_filter in CONVOLUTIONS:
                ours = np.empty((out_h, out_w, channels), np.uint8)
                resample(image, ours, resample_filter, _vertical_first(in_h, in_w, out_h, out_w))
                if not np.array_equal(ours, pillow_resize(image, out_h, out_w, resample_filter)):
                    log.warning("vectorai._resample differs from the installed Pillow's resize; using Pillow")
                    return None
    return resample


def accelerated() -> bool:
    """Whether ``resize_uint8`` runs the extension (False: Pillow, the same pixels more slowly)."""
    return _kernel() is not None


def resize_uint8(pixels: np.ndarray, height: int, width: int, resample: int = 2) -> np.ndarray:
    """(H, W, C) uint8 pixels (C 1 or 3) resized to (height, width, C) exactly as Pillow's
    ``Image.resize(..., resample, reducing_gap=None)`` would (default 2, BILINEAR)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or 0 in pixels.shape:
        raise ValueError(f"resize_uint8 takes (H, W, 1 or 3) uint8 pixels, not {pixels.dtype} {pixels.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {height}x{width}")
    in_h, in_w, channels = pixels.shape
    kernel = _kernel() if resample in CONVOLUTIONS else None
    if kernel is None:
        return pillow_resize(pixels, height, width, resample)
    out = np.empty((height, width, channels), np.uint8)
    kernel(np.ascontiguousarray(pixels), out, resample, _vertical_first(in_h, in_w, height, width))
    return out
