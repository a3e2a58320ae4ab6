"""Writing an image message, and reading the content-type that says how its payload is laid out."""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
from typing import Mapping, Sequence

import numpy as np

from vectorai.messages.failures import InvalidMessage
from vectorai.png import encode_png
from vectorai.transports.base import OutgoingMessage

PNG = "image/png"
JPEG = "image/jpeg"
NDARRAY = "application/x-ndarray"
CONTENT_TYPES = (PNG, JPEG, NDARRAY)
_RAW_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}
#: The longest content-type a message may have: the ``prediction.content_type`` column's width.
MAX_CONTENT_TYPE = 64


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
    return raw_layout(content_type, attributes.get("dtype"), attributes.get("shape"))[3]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    scaled = np.asarray(image, dtype=np.float32)
    if scaled.size and float(np.nanmax(scaled)) <= 1.0:
        scaled = scaled * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def unknown_content_type(content_type: str) -> InvalidMessage:
    """The failure of a message whose content-type is none of ``CONTENT_TYPES``."""
    return InvalidMessage(f"unknown content-type {content_type!r}; expected one of {', '.join(CONTENT_TYPES)}")


@functools.lru_cache(maxsize=256)
def raw_layout(content_type: str, dtype_attribute: str | None, shape_attribute: str | None
               ) -> tuple[np.dtype, tuple[int, ...], int, str]:
    """The dtype, shape, byte size and full content-type (``ndarray_type``) of raw pixels, from
    the content-type's parameters or from the ``dtype`` and ``shape`` attributes.

    Cached, as the timestamps are: a stream's images share one layout, and checking it per
    message cost more than the rest of decoding a raw image. (An invalid layout raises, and
    lru_cache does not keep it.)"""
    media_type, *parameters = content_type.split(";")
    if media_type.strip() != NDARRAY:
        raise unknown_content_type(content_type)
    given = {"dtype": dtype_attribute, "shape": shape_attribute}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name not in given:
            raise InvalidMessage(f"unknown parameter {name!r} in content-type {content_type!r}; "
                                 f"expected dtype and shape")
        if given[name] is not None and given[name] != value:
            raise InvalidMessage(f"content-type {content_type!r} says {name}={value} but the {name} "
                                 f"attribute says {given[name]!r}")
        given[name] = value
    dtype_name, shape_text = given["dtype"] or "", given["shape"] or ""
    dtype = _RAW_DTYPES.get(dtype_name)
    if dtype is None:
        raise InvalidMessage(f"unsupported dtype {dtype_name!r}; expected uint8 or float32")
    try:
        shape = tuple(int(part) for part in shape_text.split(","))
    except ValueError:
        raise InvalidMessage(f"malformed shape {shape_text!r}; expected H,W or H,W,C") from None
    if len(shape) not in (2, 3) or min(shape) <= 0 or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidMessage(f"unsupported shape {shape}; expected H,W or H,W,C with C in 1, 3, 4")
    full_type = ndarray_type(dtype_name, shape)
    if len(full_type) > MAX_CONTENT_TYPE:
        raise InvalidMessage(f"content-type {full_type!r} is longer than {MAX_CONTENT_TYPE} characters")
    return dtype, shape, math.prod(shape) * dtype.itemsize, full_type  # math.prod: np.prod costs more
