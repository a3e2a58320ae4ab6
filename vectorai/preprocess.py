"""The one preprocessing step shared by training and prediction, so the two never disagree.

Any image -- greyscale or colour, uint8/uint16 or float, any size -- becomes float32
(H, W, C) in [0, 1] at the model's ``image_size`` and ``channels``. numpy and Pillow only:
the prediction path must not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vectorai.errors import ImageError
from vectorai.resize import resize_uint8

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Pillow's number for its antialiased bilinear filter (Image.Resampling.BILINEAR), which the
#: float path and the 8-bit path both resize with.
BILINEAR = 2

# ITU-R BT.601 luma, what Pillow's convert("L") uses, so colour inputs match greyscale files.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects; stored beside the exported model so consumers need nothing else."""

    height: int
    width: int
    channels: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ImageError(f"image size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ImageError(f"channels must be 1 (greyscale) or 3 (colour), got {self.channels}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(int(data["height"]), int(data["width"]), int(data["channels"]))


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scale pixel values to float32 in [0, 1] from whatever range their dtype implies."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if not np.issubdtype(image.dtype, np.number):
        raise ImageError(f"unsupported pixel type {image.dtype}")
    values = image.astype(np.float32, copy=False)
    if values.size == 0:
        raise ImageError("image is empty")
    if not np.isfinite(values).all():
        raise ImageError("image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values
    if low >= 0.0 and high <= 255.0:
        # Floats holding 0..255 values: common when arrays were cast without scaling.
        return values * np.float32(1.0 / 255.0)
    raise ImageError(f"pixel values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]")


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, C]) float image to (H, W, channels)."""
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"image shape {image.shape} is not (H, W) or (H, W, C) with C in 1-4")
    have = image.shape[2]
    if have in (2, 4):  # drop alpha
        image = image[:, :, : have - 1]
        have -= 1
    if have == channels:
        return image
    if channels == 1:
        return (image @ _LUMA)[:, :, None]
    return np.repeat(image, 3, axis=2)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[0] == height and image.shape[1] == width:
        return image
    from PIL import Image

    planes = [
        np.asarray(Image.fromarray(image[:, :, c], mode="F").resize((width, height), BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(planes, axis=2), 0.0, 1.0)


def preprocess_image(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One image of any shape and dtype to float32 (height, width, channels) in [0, 1]."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image shape {image.shape} is not (H, W) or (H, W, C)")
    scaled = to_unit_range(image)
    return _resize(_convert_channels(scaled, spec.channels), spec.height, spec.width)


#: Pillow modes of 8 bits per channel, which ``fit_uint8`` takes; deeper ones go the float way.
UINT8_MODES = frozenset({"L", "LA", "1", "P", "RGB", "RGBA", "CMYK", "YCbCr"})


def fit_uint8(image: "np.ndarray | PILImage.Image", height: int, width: int, channels: int, *,
              jpeg_draft: bool = False) -> np.ndarray:
    """An 8-bit image to uint8 (height, width, channels): its colour converted once, then resized.

    ``image`` is a uint8 (H, W) or (H, W, C) array (C in 1-4, alpha dropped) or a Pillow image
    in one of ``UINT8_MODES``, possibly not loaded yet: with ``jpeg_draft``, a JPEG is then
    decoded by libjpeg at 1/2, 1/4 or 1/8 of its size when the target is at most that (its DCT
    scaling costs a fraction of decoding every pixel and resizing them away), and straight to
    greyscale for a greyscale model.

    The result equals ``preprocess_image``'s float path times 255 within about one level: the
    same colour weights (ITU-R BT.601, as Pillow's ``convert("L")``) and the same antialiased
    bilinear filter, but in 8 bits, so a third of the bytes move through resizing and the float
    array is only ever made at the model's size.
    """
    if isinstance(image, np.ndarray):
        image = _pillow_image(image)
    elif image.mode not in UINT8_MODES:
        raise ImageError(f"image mode {image.mode} is not 8 bits per channel")
    grey = channels == 1 or image.mode in ("L", "LA", "1")
    if jpeg_draft and image.format == "JPEG":
        image.draft("L" if channels == 1 else "RGB", (width, height))
    # One conversion, before resizing: greyscale resizes one plane, not three; a grey source
    # for a colour model is repeated only after resizing.
    wanted = "L" if grey else "RGB"
    if image.mode != wanted:
        image = image.convert(wanted)
    return _to_model_size(np.asarray(image), height, width, channels)


def _to_model_size(pixels: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Decoded 8-bit grey (H, W[, 1]) or RGB pixels, resized (bilinear, antialiased) and, grey
    for a colour model, repeated only once they are small."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[:2] != (height, width):
        pixels = resize_uint8(pixels, height, width, BILINEAR)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] != channels else pixels


def fit_jpeg(payload: bytes, height: int, width: int, channels: int, *, jpeg_draft: bool,
             max_pixels: int) -> np.ndarray | None:
    """``fit_uint8`` of a JPEG's bytes, the same pixels, decoded by libjpeg-turbo through
    simplejpeg instead of Pillow: Pillow's own decoder is the same library with the same
    settings, but opening a file through Pillow costs 0.1 ms of Python per photo and its decoder
    writes 4 bytes per pixel that are then packed to 3 (0.2 ms of a 1.1 ms photo in all).

    None when this cannot stand in for Pillow exactly: simplejpeg not installed, a header it
    cannot read, a colour space other than YCbCr or grey (CMYK), more than ``max_pixels``, a
    greyscale model without draft mode (Pillow converts from RGB then), or any decoding error.
    Pillow then decodes it, and names what is wrong with it."""
    try:
        import simplejpeg
    except ImportError:
        return None
    # Any failure, not only the ValueError simplejpeg documents: this is a stand-in, and Pillow
    # (inside the message's isolation boundary) is the one that decides what is wrong.
    try:
        src_h, src_w, colorspace, _ = simplejpeg.decode_jpeg_header(payload)
    except Exception:  # noqa: BLE001 - see above
        return None
    grey = colorspace == "Gray" or channels == 1
    if colorspace not in ("YCbCr", "Gray") or src_h * src_w > max_pixels or (grey and not jpeg_draft
                                                                              and colorspace != "Gray"):
        return None
    # Pillow's draft rule (JpegImageFile.draft): the largest of 8, 4, 2 that the source is at
    # least that many times the target in both directions, rounding the decoded size up.
    scale = next((s for s in (8, 4, 2) if jpeg_draft and src_w >= s * width and src_h >= s * height), 1)
    size = (-(-src_h // scale), -(-src_w // scale))
    try:
        pixels = simplejpeg.decode_jpeg(payload, colorspace="GRAY" if grey else "RGB", min_height=size[0],
                                        min_width=size[1])
    except Exception:  # noqa: BLE001 - see above
        return None
    if pixels.shape[:2] != size:  # a tiny image, which simplejpeg scaled further than Pillow would
        return None
    return _to_model_size(pixels, height, width, channels)


def _pillow_image(image: np.ndarray) -> "PILImage.Image":
    from PIL import Image

    if image.dtype != np.uint8:
        raise ImageError(f"fit_uint8 takes uint8 pixels, not {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[:, :, 0]  # the grey plane (alpha dropped)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise ImageError(f"image shape {image.shape} is not (H, W) or (H, W, C) with C in 1-4")
    return Image.fromarray(np.ascontiguousarray(image))


def as_model_input(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A batch as the model takes it: uint8 pixels (kept so until now: a quarter of the memory
    of float32) scaled to float32 in [0, 1]; float32 as it is.

    One pass, converting as it multiplies: ``astype`` then ``*`` made a float temporary as
    large as the result, and page-faulted both (5x the CPU of this on 8 photos at 224x224).
    The values are the same: each uint8 is exact in float32, times the same float32 1/255.
    ``out``: a float32 array of the batch's shape to write into (a buffer reused between calls
    faults in no new pages)."""
    if pixels.dtype == np.uint8:
        return np.multiply(pixels, np.float32(1.0 / 255.0), dtype=np.float32, out=out)
    return pixels


def stack_if_uniform(images: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One (N, H, W[, C]) array when every image has the same shape and dtype, else the list."""
    images = list(images)
    first = images[0] if images else None
    if first is not None and all(im.shape == first.shape and im.dtype == first.dtype for im in images):
        return np.stack(images)
    return images


def preprocess_images(images: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """A batch (an (N, H, W[, C]) array or a list of images of any sizes) to (N, h, w, c).

    A uniform batch already at the target size takes a vectorised path with no per-image loop.
    """
    if not isinstance(images, np.ndarray):
        images = stack_if_uniform(images)
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.shape[1:3] == (
        spec.height, spec.width
    ):
        batch = images if images.ndim == 4 else images[:, :, :, None]
        # uint8 only: float images are scaled by their own range, which must stay per image.
        if batch.dtype == np.uint8 and batch.shape[3] in (1, 3):
            scaled = to_unit_range(batch)
            if batch.shape[3] == spec.channels:
                return np.ascontiguousarray(scaled, dtype=np.float32)
            if spec.channels == 1:
                return np.ascontiguousarray((scaled @ _LUMA)[..., None])
            return np.repeat(scaled, 3, axis=3)
    out = np.empty((len(images), spec.height, spec.width, spec.channels), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess_image(image, spec)
    return out
