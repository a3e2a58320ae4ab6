"""The PNG fast path decodes exactly what Image.open decodes, and hands everything else to it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from vectorai.errors import MessageDecodeError
from vectorai.messages import PNG, DecodeLimits, _decode_simple_png, decode_message
from vectorai.transports.base import ReceivedMessage


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _message(payload: bytes) -> ReceivedMessage:
    return ReceivedMessage("local", payload, {"id": "m1", "content-type": PNG}, "t@1")


def _pillow(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)))


@pytest.mark.parametrize("shape", [(28, 28), (17, 9, 3), (5, 31, 4)])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_simple_pngs_decode_like_pillow(shape, level):
    pixels = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    # Smooth ramps too, so the encoder picks every filter type (Sub, Up, Average, Paeth).
    pixels[: shape[0] // 2] = np.arange(shape[1], dtype=np.uint8).reshape((1, shape[1]) + (1,) * (len(shape) - 2)) * 7
    payload = _png(Image.fromarray(pixels), compress_level=level)

    fast = _decode_simple_png(payload, DecodeLimits())

    assert fast is not None and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, _pillow(payload))
    np.testing.assert_array_equal(decode_message(_message(payload)).image, pixels)


@pytest.mark.parametrize("make", [
    lambda px: _png(Image.fromarray(px).convert("P")),                          # palette
    lambda px: _png(Image.fromarray(px).convert("LA")),                         # grey + alpha
    lambda px: _png(Image.fromarray(px.astype(np.uint16) * 257).convert("I;16")),  # 16 bits
    lambda px: _png(Image.fromarray(px), pnginfo=_text_chunk()),                # an extra chunk
])
def test_other_pngs_go_through_pillow(make):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 10), dtype=np.uint8)
    payload = make(pixels)

    assert _decode_simple_png(payload, DecodeLimits()) is None
    assert decode_message(_message(payload)).image.shape[:2] == (12, 10)


def _text_chunk() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello")
    return info


def test_damaged_or_oversized_pngs_are_left_to_pillow():
    payload = _png(Image.fromarray(np.zeros((8, 8), dtype=np.uint8)))
    flipped = bytearray(payload)
    flipped[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert _decode_simple_png(bytes(flipped), DecodeLimits()) is None
    assert _decode_simple_png(payload[:-12], DecodeLimits()) is None  # no IEND
    assert _decode_simple_png(payload, DecodeLimits(max_pixels=63)) is None
    with pytest.raises(MessageDecodeError, match="exceed the limit"):
        decode_message(_message(payload), limits=DecodeLimits(max_pixels=63))
    with pytest.raises(MessageDecodeError, match="cannot decode image"):
        decode_message(_message(payload[:30]))
