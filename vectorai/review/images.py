"""Stored payloads as PNG thumbnails, through the pipeline's own decoder.

The page never sends bytes from the stream as they came: every image is decoded by
``vectorai.messages.decode_message`` (size limits checked before any pixel is allocated, no
format but the one the content-type names) and re-encoded here as a fresh PNG, so a payload
crafted to be something else (HTML, SVG, a polyglot) never reaches the browser.
"""

from __future__ import annotations

import numpy as np

from vectorai.messages import DecodeLimits, decode_message
from vectorai.png import encode_png
from vectorai.transports.base import ReceivedMessage

#: Thumbnails are at most this many pixels on their longer side; smaller images stay as they
#: are (the page scales them up with CSS, pixelated).
THUMBNAIL_SIDE = 160
#: Attributes that say how to read the payload; every other one is left out of the decode.
_LAYOUT_ATTRIBUTES = ("content-type", "dtype", "shape")


def decode_stored(payload: bytes, attributes: dict[str, str], limits: DecodeLimits = DecodeLimits()
                  ) -> np.ndarray | None:
    """The image in ``payload`` as uint8 (H, W) or (H, W, C), or None when it does not decode.

    ``attributes`` needs only ``content-type`` (and, for the first raw format, ``dtype`` and
    ``shape``); a placeholder id stands in for the message's own, which is not the decoder's
    business here."""
    layout = {key: attributes[key] for key in _LAYOUT_ATTRIBUTES if isinstance(attributes.get(key), str)}
    message = ReceivedMessage(source="review", payload=bytes(payload), attributes={"id": "stored", **layout},
                              position="")
    try:
        image = decode_message(message, limits=limits).image
    except Exception:  # noqa: BLE001 - any failure means "no image"; the reason is the dead letter's own
        return None
    return to_uint8(image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 pixels of a decoded image (float images are in [0, 1]); a single channel is dropped."""
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def thumbnail_png(payload: bytes, attributes: dict[str, str], side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A re-encoded PNG of the stored image, at most ``side`` pixels on its longer side; None
    when the payload does not decode."""
    image = decode_stored(payload, attributes)
    if image is None:
        return None
    if max(image.shape[:2]) > side:
        from PIL import Image

        picture = Image.fromarray(image)
        picture.thumbnail((side, side))
        image = np.asarray(picture)
    return encode_png(np.ascontiguousarray(image))
