"""The wire format of an image message, shared by every transport and documented in the README.

A message is payload bytes plus string attributes (Kafka headers, Pub/Sub attributes, or the
local queue's JSON envelope):

* ``id``            -- required, unique per source; rows are keyed on (source, id).
* ``content-type``  -- ``image/png``, ``image/jpeg`` or ``application/x-ndarray``.
* ``dtype``/``shape`` -- only for ``application/x-ndarray``: ``uint8`` or ``float32`` (little
  endian), shape ``H,W`` or ``H,W,C`` with C in 1, 3, 4; the payload is the C-order pixel bytes.
* ``label``         -- optional true class index (an integer), for measuring accuracy.
* ``produced-at``   -- optional producer timestamp, RFC 3339 / ISO 8601 (``...Z`` or offset).

Nothing here ever unpickles, and sizes are checked before any pixel buffer is allocated.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from vectorai.errors import MessageDecodeError
from vectorai.png import decode_png, encode_png
from vectorai.transports.base import OutgoingMessage, ReceivedMessage

PNG = "image/png"
JPEG = "image/jpeg"
NDARRAY = "application/x-ndarray"
CONTENT_TYPES = (PNG, JPEG, NDARRAY)
_RAW_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}
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


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode_image(
    image: np.ndarray,
    message_id: str,
    *,
    label: int | None = None,
    encoding: str = "png",
    produced_at: dt.datetime | None = None,
) -> OutgoingMessage:
    """Encode one image (H,W or H,W,C; uint8 or float in [0,1]) as a message."""
    attributes = {"id": message_id, "produced-at": format_timestamp(produced_at or utc_now())}
    if label is not None:
        attributes["label"] = str(int(label))
    if encoding == "raw":
        array = np.ascontiguousarray(image)
        if array.dtype != np.uint8:
            array = array.astype("<f4")
        attributes.update(
            {"content-type": NDARRAY, "dtype": "uint8" if array.dtype == np.uint8 else "float32",
             "shape": ",".join(str(d) for d in array.shape)}
        )
        return OutgoingMessage(payload=array.tobytes(), attributes=attributes)
    if encoding == "png":
        attributes["content-type"] = PNG
        return OutgoingMessage(payload=encode_png(_to_uint8(image)), attributes=attributes)
    if encoding == "jpeg":
        from PIL import Image

        array = _to_uint8(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        attributes["content-type"] = JPEG
        return OutgoingMessage(payload=buffer.getvalue(), attributes=attributes)
    raise ValueError(f"unknown image encoding {encoding!r}; use png, jpeg or raw")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    scaled = np.asarray(image, dtype=np.float32)
    if scaled.size and float(np.nanmax(scaled)) <= 1.0:
        scaled = scaled * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_message(
    message: ReceivedMessage, num_classes: int | None = None, limits: DecodeLimits = DecodeLimits()
) -> DecodedMessage:
    """Turn a received message into an image; raise MessageDecodeError naming what is wrong."""
    attrs = message.attributes
    key = attrs.get("id")

    def fail(reason: str) -> MessageDecodeError:
        return MessageDecodeError(message.source, key, reason)

    if not key:
        raise fail("missing 'id' attribute")
    if "\x00" in key:
        raise fail("'id' contains a NUL character, which no database text column can store")
    payload = message.payload
    if not payload:
        raise fail("empty payload")
    if len(payload) > limits.max_bytes:
        raise fail(f"payload of {len(payload)} bytes exceeds the limit of {limits.max_bytes}")
    content_type = attrs.get("content-type", "")
    if content_type == NDARRAY:
        image = _decode_raw(payload, attrs, limits, fail)
    elif content_type in (PNG, JPEG):
        image = _decode_encoded(payload, content_type, limits, fail)
    else:
        raise fail(f"unknown content-type {content_type!r}; expected one of {', '.join(CONTENT_TYPES)}")
    label = _parse_label(attrs.get("label"), num_classes, fail)
    produced_at = _parse_timestamp(attrs.get("produced-at"), fail)
    return DecodedMessage(message=message, image=image, label=label, produced_at=produced_at)


def _decode_raw(payload: bytes, attrs: Mapping[str, str], limits: DecodeLimits, fail) -> np.ndarray:
    dtype = _RAW_DTYPES.get(attrs.get("dtype", ""))
    if dtype is None:
        raise fail(f"unsupported dtype {attrs.get('dtype')!r}; expected uint8 or float32")
    try:
        shape = tuple(int(part) for part in attrs.get("shape", "").split(","))
    except ValueError:
        raise fail(f"malformed shape {attrs.get('shape')!r}; expected H,W or H,W,C") from None
    if len(shape) not in (2, 3) or min(shape) <= 0 or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise fail(f"unsupported shape {shape}; expected H,W or H,W,C with C in 1, 3, 4")
    pixels = shape[0] * shape[1]
    if pixels > limits.max_pixels:
        raise fail(f"{pixels} pixels exceed the limit of {limits.max_pixels}")
    expected = math.prod(shape) * dtype.itemsize  # math.prod: np.prod costs more than the decode
    if expected != len(payload):
        raise fail(f"shape {shape} of {dtype.name} needs {expected} bytes but payload has {len(payload)}")
    image = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(image).all():
        raise fail("image contains NaN or infinite values")
    return image


def _decode_encoded(payload: bytes, content_type: str, limits: DecodeLimits, fail) -> np.ndarray:
    if content_type == PNG:
        image = decode_png(payload, limits.max_pixels)
        if image is not None:
            return image
    from PIL import Image, UnidentifiedImageError  # here: even a cached import costs per message

    try:
        # Only the format the content-type names: Pillow otherwise probes its plugins one by
        # one, which costs more than decoding a small image, and would accept any format.
        with Image.open(io.BytesIO(payload), formats=(_PIL_FORMATS[content_type],)) as img:
            # Image.open reads only the header: check the size before pixels are allocated.
            width, height = img.size
            if width * height > limits.max_pixels:
                raise fail(f"{width}x{height} pixels exceed the limit of {limits.max_pixels}")
            if img.mode not in ("L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK", "YCbCr"):
                raise fail(f"unsupported image mode {img.mode}")
            if img.mode in ("P", "LA", "1"):
                img = img.convert("RGBA" if img.mode == "P" else "L")
            elif img.mode in ("CMYK", "YCbCr"):
                img = img.convert("RGB")
            image = np.asarray(img)
    except MessageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise fail(f"cannot decode image: {err}") from None
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise fail("image contains NaN or infinite values")
        image = image / max(float(image.max()), 1.0)
    return image


def _parse_label(value: str | None, num_classes: int | None, fail) -> int | None:
    if value is None or value == "":
        return None
    try:
        label = int(value)
    except ValueError:
        raise fail(f"label {value!r} is not an integer class index") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise fail(f"label {label} is outside the model's {num_classes} classes")
    return label


def _parse_timestamp(value: str | None, fail) -> dt.datetime | None:
    if not value:
        return None
    try:
        return _timestamp(value)
    except ValueError:
        raise fail(f"produced-at {value!r} is not an ISO 8601 timestamp") from None


@functools.lru_cache(maxsize=1024)
def _timestamp(value: str) -> dt.datetime:
    # Cached: a producer usually stamps many messages alike (StreamData stamps a whole run), and
    # parsing cost as much per message as the rest of the attributes together.
    stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
