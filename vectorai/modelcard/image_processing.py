"""The image processor of a Hugging Face ``preprocessor_config.json``, on numpy and Pillow.

It follows ``transformers``' own PIL image processors (ViT, ConvNeXt, BiT/CLIP-style: resize,
centre crop, rescale, normalise) step by step, so that from the same decoded pixels it computes
what they compute: Pillow resizes the uint8 image with the card's filter, the crop is the same
integer arithmetic (zero padding when the image is smaller), rescaling is done in float64 and
rounded to float32 once, normalising in float32. ``tests/unit/test_modelcard.py`` checks that
against ``transformers`` itself within 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from vectorai.errors import ImageError
from vectorai.resize import resize_uint8

#: Pillow's filters by the numbers ``preprocessor_config.json`` stores (PIL.Image.Resampling).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: Keys a card's image processor may hold; anything else in preprocessor_config.json (the
#: processor's class name, a feature extractor's leftovers) is read past.
KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
        "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")
#: ``transformers`` image processors that resize to ``shortest_edge / crop_pct`` and then crop
#: (below 384) or warp to a square (from 384): ConvNeXt's own rule, also used by ResNet's hub
#: configs. Other processors have no crop_pct.
_CROP_PCT_PROCESSORS = ("ConvNextImageProcessor", "ConvNextFeatureExtractor")


class CardValueError(ValueError):
    """A key of the card has a value this module cannot use; the message names the key."""


@dataclass(frozen=True)
class ImageProcessing:
    """What to do to one decoded image before the model: the image processor's keys.

    Defaults are those a ``preprocessor_config.json`` leaves out least surprisingly: resize
    bilinearly, no crop, scale by 1/255, no normalisation unless a mean and std are given,
    convert to RGB."""

    do_resize: bool = True
    #: ``{"height": H, "width": W}`` or ``{"shortest_edge": S}``.
    size: Mapping[str, int] = field(default_factory=dict)
    resample: int = 2
    do_center_crop: bool = False
    crop_size: Mapping[str, int] = field(default_factory=dict)
    #: ConvNeXt only: resize the shortest edge to size/crop_pct, then crop to size.
    crop_pct: float | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()
    do_convert_rgb: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ImageProcessing":
        """From a ``preprocessor_config.json`` dict (or a card's ``preprocessor`` section)."""
        if not isinstance(config, Mapping):
            raise CardValueError(f"the image processor must be a JSON object, not {type(config).__name__}")
        processor = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
        crop_pct = config.get("crop_pct")
        if crop_pct is not None and processor and processor not in _CROP_PCT_PROCESSORS:
            raise CardValueError(f"crop_pct is understood for {', '.join(_CROP_PCT_PROCESSORS)} only, not "
                                 f"{processor}")
        if crop_pct is not None and not processor:
            processor = _CROP_PCT_PROCESSORS[0]  # our own cards: crop_pct means ConvNeXt's rule
        if processor in _CROP_PCT_PROCESSORS and crop_pct is None:
            crop_pct = 224 / 256  # ConvNextImageProcessor's default
        do_center_crop = _bool(config, "do_center_crop", False)
        # An int size is a square for ViT-style processors; ConvNeXt and the crop-after-resize
        # processors (BiT, CLIP) read it as the shortest edge, as transformers' get_size_dict does.
        shortest = processor in _CROP_PCT_PROCESSORS or do_center_crop
        size = _size(config.get("size"), "size", shortest_edge=shortest)
        mean, std = config.get("image_mean"), config.get("image_std")
        do_normalize = _bool(config, "do_normalize", mean is not None and std is not None)
        processing = cls(
            do_resize=_bool(config, "do_resize", True),
            size=size,
            resample=_resample(config.get("resample", 2)),
            do_center_crop=do_center_crop,
            crop_size=_size(config.get("crop_size"), "crop_size", shortest_edge=False),
            crop_pct=None if crop_pct is None else _positive(crop_pct, "crop_pct"),
            do_rescale=_bool(config, "do_rescale", True),
            rescale_factor=_positive(config.get("rescale_factor", 1 / 255), "rescale_factor"),
            do_normalize=do_normalize,
            image_mean=_floats(mean, "image_mean") if do_normalize else (),
            image_std=_floats(std, "image_std") if do_normalize else (),
            do_convert_rgb=_bool(config, "do_convert_rgb", True),
        )
        if processing.crop_pct is not None and "shortest_edge" not in size:
            raise CardValueError(f"{processor} needs size as shortest_edge, not {size}")
        processing.output_size()  # a card that gives no fixed size fails here, not per image
        if do_normalize and any(s == 0 for s in processing.image_std):
            raise CardValueError("image_std has a zero")
        return processing

    def to_config(self) -> dict[str, Any]:
        """The keys as ``preprocessor_config.json`` writes them (``from_config`` reads them back)."""
        out = asdict(self)
        out["size"], out["crop_size"] = dict(self.size), dict(self.crop_size)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        if self.crop_pct is None:
            del out["crop_pct"]
        else:
            out["image_processor_type"] = _CROP_PCT_PROCESSORS[0]
        return out

    def output_size(self) -> tuple[int, int]:
        """(height, width) of every processed image: a batch needs one size."""
        if self.do_center_crop:
            if "height" not in self.crop_size:
                raise CardValueError("do_center_crop is set but crop_size has no height and width")
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize:
            if "height" in self.size:
                return self.size["height"], self.size["width"]
            if "shortest_edge" in self.size and self.crop_pct is not None:
                edge = self.size["shortest_edge"]
                return edge, edge
            if "shortest_edge" in self.size:
                raise CardValueError("size gives only shortest_edge and there is no centre crop, so images of "
                                     "other shapes would come out at other sizes; add do_center_crop and "
                                     "crop_size, or give size as height and width")
            raise CardValueError("do_resize is set but size has neither height and width nor shortest_edge")
        raise CardValueError("neither do_resize nor do_center_crop is set, so images would keep their own "
                             "sizes; a batch needs one")

    def check_channels(self, channels: int) -> None:
        """Fail when the mean or std has a length other than 1 or the model's channel count."""
        for name, values in (("image_mean", self.image_mean), ("image_std", self.image_std)):
            if self.do_normalize and len(values) not in (1, channels):
                raise CardValueError(f"{name} has {len(values)} values but the model takes {channels} "
                                     f"channel{'s' if channels > 1 else ''}")

    # --- applying it ------------------------------------------------------------------------

    def process(self, image: np.ndarray, channels: int) -> np.ndarray:
        """One decoded image (H, W) or (H, W, C) to float32 (channels, height, width), in RGB
        order for 3 channels."""
        chw = np.moveaxis(to_channels(as_uint8(image), channels), -1, 0)
        if self.do_resize:
            chw = _resize(chw, self._resize_to(chw.shape[1], chw.shape[2]), self.resample)
            if self.crop_pct is not None and self.size["shortest_edge"] < 384:
                edge = self.size["shortest_edge"]
                chw = center_crop(chw, edge, edge)
        if self.do_center_crop:
            chw = center_crop(chw, self.crop_size["height"], self.crop_size["width"])
        out: np.ndarray = chw
        if self.do_rescale:
            out = (out.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(out.dtype, np.floating):
                out = out.astype(np.float32)
            mean = np.array(_per_channel(self.image_mean, channels), dtype=out.dtype)[:, None, None]
            std = np.array(_per_channel(self.image_std, channels), dtype=out.dtype)[:, None, None]
            out = (out - mean) / std
        return out.astype(np.float32, copy=False)

    def _resize_to(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, for an image of ``height`` x ``width``."""
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        if self.crop_pct is not None:
            if edge >= 384:  # ConvNeXt warps to a square at 384 and above
                return edge, edge
            edge = int(edge / self.crop_pct)
        return shortest_edge_size(height, width, edge)


def shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size(default_to_square=False): the short side
    becomes ``edge``, the long one keeps the ratio, truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def as_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8. Other pixel types (16-bit PNGs, float arrays) are scaled by their range
    first, as our own preprocessing does, then rounded."""
    from vectorai.preprocess import to_unit_range

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1 or image.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"image shape {image.shape} is not (H, W) or (H, W, C) with C in 1-4")
    if image.dtype != np.uint8:
        image = np.round(to_unit_range(image) * 255.0).astype(np.uint8)
    return image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) uint8 to (H, W, channels): alpha composited onto white and rounded (what
    transformers' convert_to_rgb does to an array), grey repeated into RGB, RGB to grey with
    Pillow's convert("L")."""
    have = image.shape[2]
    if have in (2, 4):
        alpha = image[..., have - 1:] / 255
        image = np.round(alpha * image[..., : have - 1] + (1 - alpha) * 255).astype(np.uint8)
        have -= 1
    if have == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image), mode="RGB").convert("L"))[:, :, None]


def _resize(chw: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Pillow's resize with the card's filter, as transformers' processors call it (through
    ``vectorai.resize``: the same pixels)."""
    height, width = size
    if height < 1 or width < 1:
        raise ImageError(f"resizing to {height}x{width}: the image is too narrow for the card's size")
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, -1))
    if hwc.shape[2] not in (1, 3):
        raise ImageError(f"cannot resize an image of {hwc.shape[2]} channels; the model takes 1 or 3")
    return np.moveaxis(resize_uint8(hwc, height, width, resample), -1, 0)


def center_crop(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop: the middle ``height`` x ``width``, zero-padded where the image
    is smaller."""
    orig_h, orig_w = chw.shape[1], chw.shape[2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return chw[:, top:top + height, left:left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((chw.shape[0], new_h, new_w), dtype=chw.dtype)
    top_pad, left_pad = math.ceil((new_h - orig_h) / 2), math.ceil((new_w - orig_w) / 2)
    padded[:, top_pad:top_pad + orig_h, left_pad:left_pad + orig_w] = chw
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


# --- reading keys -----------------------------------------------------------------------------


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return values * channels if len(values) == 1 else values


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CardValueError(f"{key} must be true or false, not {value!r}")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CardValueError(f"{what} must be a positive whole number, not {value!r}")
    return value


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CardValueError(f"{what} must be a positive number, not {value!r}")
    return float(value)


def _size(value: Any, key: str, *, shortest_edge: bool) -> dict[str, int]:
    if value is None or (isinstance(value, Mapping) and not value):
        return {}
    if isinstance(value, int) and not isinstance(value, bool):
        edge = _positive_int(value, key)
        return {"shortest_edge": edge} if shortest_edge else {"height": edge, "width": edge}
    if not isinstance(value, Mapping):
        raise CardValueError(f"{key} must be a number or an object with height and width, or shortest_edge")
    if "height" in value or "width" in value:
        return {"height": _positive_int(value.get("height"), f"{key}.height"),
                "width": _positive_int(value.get("width"), f"{key}.width")}
    if "shortest_edge" in value:
        if value.get("longest_edge") is not None:
            raise CardValueError(f"{key}.longest_edge is not supported (images would come out at several sizes)")
        return {"shortest_edge": _positive_int(value["shortest_edge"], f"{key}.shortest_edge")}
    raise CardValueError(f"{key} {dict(value)!r} has neither height and width nor shortest_edge")


def _resample(value: Any) -> int:
    if isinstance(value, bool) or value not in RESAMPLE_NAMES:
        raise CardValueError(f"resample must be one of Pillow's filters 0-5 "
                             f"({', '.join(f'{k} {v}' for k, v in RESAMPLE_NAMES.items())}), not {value!r}")
    return int(value)


def _floats(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise CardValueError(f"{key} must be a number or a list of numbers, not {value!r}")
    return tuple(float(v) for v in value)
