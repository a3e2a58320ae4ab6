"""The wire format of an image message, shared by every transport and documented in the README.

A message is payload bytes plus string attributes (Kafka headers, Pub/Sub attributes, or the
local queue's JSON envelope):

* ``id``            -- required, unique per source; rows are keyed on (source, id).
* ``content-type``  -- ``image/png``, ``image/jpeg`` or, for pixel bytes,
  ``application/x-ndarray; dtype=D; shape=S``: D is ``uint8`` or ``float32`` (little endian), S is
  ``H,W`` or ``H,W,C`` with C in 1, 3, 4, and the payload is the C-order pixel bytes. D and S may
  instead come as attributes of their own, ``dtype`` and ``shape`` (the first version of this
  format); StreamData sends the parameters, two attributes fewer for every consumer to parse.
* ``label``         -- optional true class index (an integer), for measuring accuracy.
* ``produced-at``   -- optional producer timestamp, RFC 3339 / ISO 8601 (``...Z`` or offset).

Nothing here ever unpickles, and sizes are checked before any pixel buffer is allocated.

Everything done to one message -- checking its attributes, decoding, and, for an image that is
not already the model's size, preprocessing -- runs inside one isolation boundary
(``Failures.run``): *any* exception there makes that message a failure with a one-line reason,
and never reaches the rest of the batch. No decoder needs a catch-all of its own, and a failure
mode nobody listed (a Pillow ``SyntaxError``, a timestamp that overflows) cannot stop a stream.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from vectorai.errors import MessageDecodeError
from vectorai.png import Scanlines, encode_png, image_of, inflate_png, unfilter
from vectorai.preprocess import UINT8_MODES, PreprocessSpec, fit_jpeg, fit_uint8, preprocess_image
from vectorai.transports.base import OutgoingMessage, ReceivedMessage

PNG = "image/png"
JPEG = "image/jpeg"
NDARRAY = "application/x-ndarray"
CONTENT_TYPES = (PNG, JPEG, NDARRAY)
_RAW_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}
#: The longest content-type a message may have: the ``prediction.content_type`` column's width.
MAX_CONTENT_TYPE = 64
_PIL_FORMATS = {PNG: "PNG", JPEG: "JPEG"}
#: The longest id a message may have: the ``message_id`` columns' width. A longer one is a
#: failure, never truncated (two ids sharing 255 characters would be merged into one row).
MAX_ID = 255
#: The longest failure reason kept: enough for any message this module words, and a bound on
#: what a third-party exception's text (which may echo the payload) can put in the database.
MAX_REASON = 500
_T = TypeVar("_T")


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
        attributes["content-type"] = ndarray_type("uint8" if array.dtype == np.uint8 else "float32",
                                                  array.shape)
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


def ndarray_type(dtype: str, shape: Sequence[int]) -> str:
    """The content-type of raw pixel bytes: ``application/x-ndarray; dtype=uint8; shape=28,28``."""
    return f"{NDARRAY}; dtype={dtype}; shape={','.join(str(int(d)) for d in shape)}"


def stored_content_type(attributes: Mapping[str, str]) -> str:
    """The content-type to store with a decoded message's payload: as received, except that raw
    pixels always get ``dtype`` and ``shape`` parameters (whether they came as parameters or as
    attributes), so that the stored bytes say how to read them."""
    content_type = attributes.get("content-type", "")
    if not content_type.startswith(NDARRAY):
        return content_type
    return _raw_layout(content_type, attributes.get("dtype"), attributes.get("shape"))[3]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    scaled = np.asarray(image, dtype=np.float32)
    if scaled.size and float(np.nanmax(scaled)) <= 1.0:
        scaled = scaled * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class _Invalid(Exception):
    """Why one message of a batch cannot be decoded; becomes a failure or a MessageDecodeError."""


_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9A-Fa-f]+>")


def failure_reason(err: BaseException) -> str:
    """One line, at most MAX_REASON characters, that says why a message failed.

    Our own reasons are kept as worded, any other exception is named by its type and text; in
    either, object reprs (``<_io.BytesIO object at 0x...>``, which Pillow's errors quote) are cut
    to the type, and NUL characters and lone surrogates escaped, so that the reason can always
    be stored as text."""
    text = str(err) if isinstance(err, _Invalid) else f"{type(err).__name__}: {err}".rstrip(": ")
    text = " ".join(_OBJECT_REPR.sub(r"<\1>", text).split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


class Failures(list):
    """The messages of a batch that failed, each with its reason: ``list[(message, reason)]``."""

    def run(self, message: ReceivedMessage, step: Callable[..., _T], *args: object) -> _T | None:
        """``step(*args)`` for one message: its result, or None with the message recorded here.

        The one isolation boundary for per-message work (see the module's docstring)."""
        try:
            return step(*args)
        except Exception as err:  # noqa: BLE001 - by design: any failure of one message is its own
            self.append((message, failure_reason(err)))
            return None


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
        raise _Invalid(message.problem)
    attrs = message.attributes
    _check_attributes(attrs)
    label = _parse_label(attrs.get("label"), num_classes)
    stamp = _parse_timestamp(attrs.get("produced-at"))
    pixels = _pixels(message, limits, spec, jpeg_draft)
    if spec is not None and not _at_model_size(pixels, spec):
        image = _one(pixels)
        pixels = (fit_uint8(image, spec.height, spec.width, spec.channels) if image.dtype == np.uint8
                  else preprocess_image(image, spec))
    return pixels, label, stamp


def _check_attributes(attrs: Mapping[str, object]) -> None:
    for name, value in attrs.items():
        if type(value) is not str:  # a local queue's JSON null or number: never str()'d into "None"
            raise _Invalid(f"attribute {str(name)[:64]!r} is {_json_type(value)}, not a string")
    problem = id_problem(attrs.get("id"))
    if problem is not None:
        raise _Invalid(problem)


def id_problem(key: object) -> str | None:
    """Why ``key`` cannot be stored as a row's id as it is, or None when it can. The one rule for
    prediction rows and dead letters alike."""
    if not key:
        return "missing 'id' attribute"
    if not isinstance(key, str):
        return f"'id' is {_json_type(key)}, not a string"
    if len(key) > MAX_ID:
        return (f"'id' of {len(key)} characters is longer than {MAX_ID}; it is never truncated, "
                f"which could merge it with another message's id")
    if "\x00" in key:
        return "'id' contains a NUL character, which no database text column can store"
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: a Kafka key that was not UTF-8, or broken text from a producer.
            return f"'id' {key.encode('utf-8', 'backslashreplace').decode()[:80]!r} is not valid UTF-8 text"
    return None


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


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
        raise _Invalid(f"payload is {type(payload).__name__}, not bytes")
    if not payload:
        raise _Invalid("empty payload")
    if len(payload) > limits.max_bytes:
        raise _Invalid(f"payload of {len(payload)} bytes exceeds the limit of {limits.max_bytes}")
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
    raise _unknown_type(content_type)


def _unknown_type(content_type: str) -> _Invalid:
    return _Invalid(f"unknown content-type {content_type!r}; expected one of {', '.join(CONTENT_TYPES)}")


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
        raise _Invalid(f"content-type {content_type[:MAX_CONTENT_TYPE]!r}... is longer than "
                       f"{MAX_CONTENT_TYPE} characters")
    if len(dtype_name or "") > 16 or len(shape_text or "") > 32:
        raise _Invalid(f"malformed dtype or shape attribute {(dtype_name or '')[:16]!r}, "
                       f"{(shape_text or '')[:32]!r}; expected uint8 or float32, and H,W or H,W,C")
    dtype, shape, expected, _ = _raw_layout(content_type, dtype_name, shape_text)
    if shape[0] * shape[1] > limits.max_pixels:
        raise _Invalid(f"{shape[0] * shape[1]} pixels exceed the limit of {limits.max_pixels}")
    if expected != len(payload):
        raise _Invalid(f"shape {shape} of {dtype.name} needs {expected} bytes but payload has {len(payload)}")
    if dtype.kind == "u":
        return _RawPixels(shape, payload)
    image = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if not np.isfinite(image).all():
        raise _Invalid("image contains NaN or infinite values")
    return image


@functools.lru_cache(maxsize=256)
def _raw_layout(content_type: str, dtype_attribute: str | None, shape_attribute: str | None
                ) -> tuple[np.dtype, tuple[int, ...], int, str]:
    """The dtype, shape, byte size and full content-type (``ndarray_type``) of raw pixels, from
    the content-type's parameters or from the ``dtype`` and ``shape`` attributes.

    Cached, as ``_timestamp`` is: a stream's images share one layout, and checking it per
    message cost more than the rest of decoding a raw image. (An invalid layout raises, and
    lru_cache does not keep it.)"""
    media_type, *parameters = content_type.split(";")
    if media_type.strip() != NDARRAY:
        raise _unknown_type(content_type)
    given = {"dtype": dtype_attribute, "shape": shape_attribute}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name not in given:
            raise _Invalid(f"unknown parameter {name!r} in content-type {content_type!r}; "
                           f"expected dtype and shape")
        if given[name] is not None and given[name] != value:
            raise _Invalid(f"content-type {content_type!r} says {name}={value} but the {name} "
                           f"attribute says {given[name]!r}")
        given[name] = value
    dtype_name, shape_text = given["dtype"] or "", given["shape"] or ""
    dtype = _RAW_DTYPES.get(dtype_name)
    if dtype is None:
        raise _Invalid(f"unsupported dtype {dtype_name!r}; expected uint8 or float32")
    try:
        shape = tuple(int(part) for part in shape_text.split(","))
    except ValueError:
        raise _Invalid(f"malformed shape {shape_text!r}; expected H,W or H,W,C") from None
    if len(shape) not in (2, 3) or min(shape) <= 0 or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise _Invalid(f"unsupported shape {shape}; expected H,W or H,W,C with C in 1, 3, 4")
    full_type = ndarray_type(dtype_name, shape)
    if len(full_type) > MAX_CONTENT_TYPE:
        raise _Invalid(f"content-type {full_type!r} is longer than {MAX_CONTENT_TYPE} characters")
    return dtype, shape, math.prod(shape) * dtype.itemsize, full_type  # math.prod: np.prod costs more


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
                raise _Invalid(f"{width}x{height} pixels exceed the limit of {limits.max_pixels}")
            if img.mode not in ("L", "RGB", "RGBA", "LA", "P", "I;16", "I", "F", "1", "CMYK", "YCbCr"):
                raise _Invalid(f"unsupported image mode {img.mode}")
            if spec is not None and img.mode in UINT8_MODES:
                return fit_uint8(img, spec.height, spec.width, spec.channels, jpeg_draft=jpeg_draft)
            if img.mode in ("P", "LA", "1"):
                img = img.convert("RGBA" if img.mode == "P" else "L")
            elif img.mode in ("CMYK", "YCbCr"):
                img = img.convert("RGB")
            image = np.asarray(img)
    except _Invalid:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise _Invalid(f"cannot decode image: {err}") from None
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise _Invalid("image contains NaN or infinite values")
        image = image / max(float(image.max()), 1.0)
    return image


def _parse_label(value: str | None, num_classes: int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        label = int(value)
    except ValueError:
        raise _Invalid(f"label {value!r} is not an integer class index") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise _Invalid(f"label {label} is outside the model's {num_classes} classes")
    return label


def _parse_timestamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    if len(value) > 64:
        raise _Invalid(f"produced-at {value[:64]!r}... is not an ISO 8601 timestamp")
    try:
        return _timestamp(value)
    except ValueError:
        raise _Invalid(f"produced-at {value!r} is not an ISO 8601 timestamp") from None
    except OverflowError:
        raise _Invalid(f"produced-at {value!r} is out of range in UTC") from None


@functools.lru_cache(maxsize=1024)
def _timestamp(value: str) -> dt.datetime:
    """The timestamp in UTC. Converted here, inside the isolation boundary: a valid stamp can
    still overflow on the way to UTC (0001-01-01T00:00:00+01:00).

    Cached: a producer usually stamps many messages alike (StreamData stamps a whole run), and
    parsing cost as much per message as the rest of the attributes together. (Only strings of
    at most 64 characters reach the cache.)"""
    stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp.astimezone(dt.timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
