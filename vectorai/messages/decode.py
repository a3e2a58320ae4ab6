"""Turning received messages into images, inside the one isolation boundary per message.

The pixels of a uniform batch are put together in one numpy step at the end, and an image that
is not the model's size is brought to it as soon as it is decoded.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from vectorai.errors import MessageDecodeError
from vectorai.messages.attributes import check_attributes, parse_label, parse_timestamp
from vectorai.messages.failures import Failures, InvalidMessage
from vectorai.messages.wire import JPEG, MAX_CONTENT_TYPE, NDARRAY, PNG, raw_layout, unknown_content_type
from vectorai.png import Scanlines, image_of, inflate_png, unfilter
from vectorai.preprocess import UINT8_MODES, PreprocessSpec, fit_jpeg, fit_uint8, preprocess_image
from vectorai.transports.base import ReceivedMessage

_PIL_FORMATS = {PNG: "PNG", JPEG: "JPEG"}


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds checked before decoding, so a hostile message cannot exhaust memory."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class DecodedMessage:
    """A message turned into an image, with what the producer said about it."""

    message: ReceivedMessage
    image: np.ndarray
    label: int | None
    produced_at: dt.datetime | None

    @property
    def key(self) -> str:
        return self.message.attributes["id"]


class _RawPixels(NamedTuple):
    """A uint8 ndarray payload, checked and not yet copied: a batch of them becomes one array."""

    shape: tuple[int, ...]
    payload: bytes


@dataclass
class DecodedImages:
    """Messages decoded together. ``images`` is one (N, H, W[, C]) uint8 array when every image
    of the batch has the same shape and encoding (one producer, the usual case), else a list."""

    messages: list[ReceivedMessage]
    images: np.ndarray | list[np.ndarray]
    labels: list[int | None]
    produced_at: list[dt.datetime | None]
    #: The messages that could not be decoded, each with the reason.
    failures: Failures


def decode_messages(
    messages: Sequence[ReceivedMessage], num_classes: int | None = None, limits: DecodeLimits = DecodeLimits(),
    spec: PreprocessSpec | None = None, *, jpeg_draft: bool = False,
) -> DecodedImages:
    """Turn a batch of received messages into images; a message that cannot be decoded is a
    failure with the reason, and never stops the rest.

    Each message is checked and inflated on its own, but the pixels of a uniform batch are put
    together in one step (``png.unfilter``, one join of raw payloads): per image, those numpy
    calls cost as much as inflating it.

    With the model's ``spec``, every image that is not uint8 at the model's height and width is
    preprocessed (``preprocess_image``) as soon as it is decoded, one at a time: so a batch never
    holds more than one full-size image, whatever its messages declare (256 4096x4096 RGBA PNGs
    would otherwise be 16 GiB of pixels at once). The result is already float32 in [0, 1] at the
    model's shape, which preprocessing leaves as it is. An 8-bit image is brought to the model's
    size in 8 bits (``preprocess.fit_uint8``, a JPEG in ``jpeg_draft`` mode when that is on), and
    stays uint8 until the model takes it."""
    decoded: list[ReceivedMessage] = []
    pixels: list[Scanlines | _RawPixels | np.ndarray] = []
    labels: list[int | None] = []
    stamps: list[dt.datetime | None] = []
    failures = Failures()
    for message in messages:
        parts = failures.run(message, _decode_parts, message, num_classes, limits, spec, jpeg_draft)
        if parts is None:
            continue
        image, label, stamp = parts
        decoded.append(message)
        pixels.append(image)
        labels.append(label)
        stamps.append(stamp)
    return DecodedImages(decoded, _assemble(pixels), labels, stamps, failures)


def decode_message(
    message: ReceivedMessage, num_classes: int | None = None, limits: DecodeLimits = DecodeLimits()
) -> DecodedMessage:
    """Turn a received message into an image; raise MessageDecodeError naming what is wrong."""
    failures = Failures()
    parts = failures.run(message, _decode_parts, message, num_classes, limits, None, False)
    if parts is None:
        key = message.attributes.get("id")
        raise MessageDecodeError(message.source, key if isinstance(key, str) else None, failures[0][1])
    pixels, label, stamp = parts
    return DecodedMessage(message=message, image=_one(pixels), label=label, produced_at=stamp)


def _decode_parts(message: ReceivedMessage, num_classes: int | None, limits: DecodeLimits,
                  spec: PreprocessSpec | None, jpeg_draft: bool,
                  ) -> tuple[Scanlines | _RawPixels | np.ndarray, int | None, dt.datetime | None]:
    """Everything one message needs before the model: run inside the isolation boundary."""
    if message.problem is not None:
        raise InvalidMessage(message.problem)
    attrs = message.attributes
    check_attributes(attrs)
    label = parse_label(attrs.get("label"), num_classes)
    stamp = parse_timestamp(attrs.get("produced-at"))
    pixels = _pixels(message, limits, spec, jpeg_draft)
    if spec is not None and not _at_model_size(pixels, spec):
        image = _one(pixels)
        pixels = (fit_uint8(image, spec.height, spec.width, spec.channels) if image.dtype == np.uint8
                  else preprocess_image(image, spec))
    return pixels, label, stamp


def _at_model_size(pixels: Scanlines | _RawPixels | np.ndarray, spec: PreprocessSpec) -> bool:
    """Whether an image is uint8 at the model's height and width: the compact form a uniform
    batch is converted from in one numpy step."""
    if type(pixels) is Scanlines:
        return pixels.height == spec.height and pixels.width == spec.width
    shape = pixels.shape if type(pixels) is _RawPixels else (pixels.shape if pixels.dtype == np.uint8 else ())
    return shape[:2] == (spec.height, spec.width)


def _pixels(message: ReceivedMessage, limits: DecodeLimits, spec: PreprocessSpec | None = None,
            jpeg_draft: bool = False) -> Scanlines | _RawPixels | np.ndarray:
    attrs = message.attributes
    payload = message.payload
    if type(payload) is not bytes:  # a transport's bug, or a queue row's TEXT: never joined as bytes
        raise InvalidMessage(f"payload is {type(payload).__name__}, not bytes")
    if not payload:
        raise InvalidMessage("empty payload")
    if len(payload) > limits.max_bytes:
        raise InvalidMessage(f"payload of {len(payload)} bytes exceeds the limit of {limits.max_bytes}")
    content_type = attrs.get("content-type", "")
    if content_type == PNG:
        inflated = inflate_png(payload, limits.max_pixels)
        if inflated is not None:
            return inflated
        return _decode_encoded(payload, content_type, limits, spec, jpeg_draft)
    if content_type.startswith(NDARRAY):
        return _decode_raw(payload, content_type, attrs, limits)
    if content_type == JPEG:
        return _decode_encoded(payload, content_type, limits, spec, jpeg_draft)
    raise unknown_content_type(content_type)


def _assemble(pixels: list[Scanlines | _RawPixels | np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array for a uniform batch, else each image on its own (greyscale as H,W)."""
    if not pixels:
        return []
    first = pixels[0]
    kind = type(first)
    if kind is Scanlines:
        geometry = first[:3]
        if all(type(p) is Scanlines and p[:3] == geometry for p in pixels):
            return unfilter(pixels)
    elif kind is _RawPixels and all(type(p) is _RawPixels and p.shape == first.shape for p in pixels):
        joined = b"".join([p.payload for p in pixels])
        return np.frombuffer(joined, dtype=np.uint8).reshape((len(pixels),) + first.shape)
    return [_one(p) for p in pixels]


def _one(pixels: Scanlines | _RawPixels | np.ndarray) -> np.ndarray:
    if type(pixels) is Scanlines:
        return image_of(pixels)
    if type(pixels) is _RawPixels:
        return np.frombuffer(pixels.payload, dtype=np.uint8).reshape(pixels.shape)
    return pixels


def _decode_raw(payload: bytes, content_type: str, attrs: Mapping[str, str], limits: DecodeLimits
                ) -> _RawPixels | np.ndarray:
    dtype_name, shape_text = attrs.get("dtype"), attrs.get("shape")
    # Checked before the cache below, which then holds only short strings.
    if len(content_type) > MAX_CONTENT_TYPE:
        raise InvalidMessage(f"content-type {content_type[:MAX_CONTENT_TYPE]!r}... is longer than "
                             f"{MAX_CONTENT_TYPE} characters")
    if len(dtype_name or "") > 16 or len(shape_text or "") > 32:
        raise InvalidMessage(f"malformed dtype or shape attribute {(dtype_name or '')[:16]!r}, "
                             f"{(shape_text or '')[:32]!r}; expected uint8 or float32, and H,W or H,W,C")
    dtype, shape, expected, _ = raw_layout(content_type, dtype_name, shape_text)
    if shape[0] * shape[1] > limits.max_pixels:
        raise InvalidMessage(f"{shape[0] * shape[1]} pixels exceed the limit of {limits.max_pixels}")
    if expected != len(payload):
        raise InvalidMessage(f"shape {shape} of {dtype.name} needs {expected} bytes but payload has {len(payload)}")
    if dtype.kind == "u":
        return _RawPixels(shape, payload)
    image = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if not np.isfinite(image).all():
        raise InvalidMessage("image contains NaN or infinite values")
    return image


def _decode_encoded(payload: bytes, content_type: str, limits: DecodeLimits, spec: PreprocessSpec | None = None,
                    jpeg_draft: bool = False) -> np.ndarray:
    """The image's pixels; with the model's ``spec``, an 8-bit image straight at the model's size
    (``fit_uint8``: decoded in draft mode when asked, so never at full size)."""
    if content_type == JPEG and spec is not None:
        fitted = fit_jpeg(payload, spec.height, spec.width, spec.channels, jpeg_draft=jpeg_draft,
                          max_pixels=limits.max_pixels)
        if fitted is not None:
            return fitted
    from PIL import Image, UnidentifiedImageError  # here: even a cached import costs per message

    try:
        # Only the format the content-type names: Pillow otherwise probes its plugins one by
        # one, which costs more than decoding a small image, and would accept any format.
        with Image.open(io.BytesIO(payload), formats=(_PIL_FORMATS[content_type],)) as img:
            # Image.open reads only the header: check the size before pixels are allocated.
            width, height = img.size
            if width * height > limits.max_pixels:
                raise InvalidMessage(f"{width}x{height} pixels exceed the limit of {limits.max_pixels}")
            if img.mode not in ("L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK", "YCbCr"):
                raise InvalidMessage(f"unsupported image mode {img.mode}")
            if spec is not None and img.mode in UINT8_MODES:
                return fit_uint8(img, spec.height, spec.width, spec.channels, jpeg_draft=jpeg_draft)
            if img.mode in ("P", "LA", "1"):
                img = img.convert("RGBA" if img.mode == "P" else "L")
            elif img.mode in ("CMYK", "YCbCr"):
                img = img.convert("RGB")
            image = np.asarray(img)
    except InvalidMessage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidMessage(f"cannot decode image: {err}") from None
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise InvalidMessage("image contains NaN or infinite values")
        image = image / max(float(image.max()), 1.0)
    return image
