"""vectorai.png: what it writes is a PNG Pillow reads back exactly; what it decodes matches
Image.open; anything it does not handle is left to Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from vectorai.errors import MessageDecodeError
from vectorai.messages import PNG, DecodeLimits, decode_message, encode_image
from vectorai.png import decode_png, encode_png
from vectorai.transports.base import ReceivedMessage


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _message(payload: bytes) -> ReceivedMessage:
    return ReceivedMessage("local", payload, {"id": "m1", "content-type": PNG}, "t@1")


def _pillow(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)))


def _images(shape, seed):
    """Noise, horizontal ramps, vertical ramps and flat images: each favours another filter."""
    rng = np.random.default_rng(seed)
    ramp = np.arange(max(shape[:2]), dtype=np.uint8) * 7
    extra = (1,) * (len(shape) - 2)
    yield rng.integers(0, 256, shape, dtype=np.uint8)
    yield np.broadcast_to(ramp[: shape[1]].reshape((1, shape[1]) + extra), shape).copy()
    yield np.broadcast_to(ramp[: shape[0]].reshape((shape[0], 1) + extra), shape).copy()
    yield np.full(shape, 200, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(28, 28), (17, 9, 3), (5, 31, 4), (1, 1), (32, 32, 1)])
def test_encode_png_round_trips_through_pillow_and_the_fast_path(shape):
    kinds = set()
    for pixels in _images(shape, seed=len(shape)):
        payload = encode_png(pixels)
        expected = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
        np.testing.assert_array_equal(_pillow(payload), expected)
        fast = decode_png(payload, DecodeLimits().max_pixels)
        assert fast is not None and fast.dtype == np.uint8
        np.testing.assert_array_equal(fast, expected)
        kinds.add(_filter_types(payload, shape))
    if min(shape[:2]) > 2:  # tiny images tie; larger ones must use more than one filter
        assert len(kinds) > 1, kinds


def _filter_types(payload: bytes, shape) -> tuple[int, ...]:
    import zlib

    start = payload.index(b"IDAT") + 4
    length = int.from_bytes(payload[start - 8:start - 4], "big")
    raw = np.frombuffer(zlib.decompress(payload[start:start + length]), dtype=np.uint8)
    rows = raw.reshape(shape[0], -1)
    return tuple(sorted(set(rows[:, 0].tolist())))


def test_encode_image_png_is_smaller_than_raw_and_decodes_exactly():
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 12:16] = 255  # a "1"
    message = encode_image(pixels, "m1")
    assert message.attributes["content-type"] == PNG
    assert len(message.payload) < pixels.size / 2
    np.testing.assert_array_equal(decode_message(_message(message.payload)).image, pixels)


@pytest.mark.parametrize("values", [(1.5, "float"), (np.uint16, "dtype")])
def test_encode_png_refuses_what_png_cannot_hold(values):
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(np.zeros((4, 4), dtype=np.float32 if values[1] == "float" else np.uint16))
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(np.zeros((4, 4, 2), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(28, 28), (17, 9, 3), (5, 31, 4)])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_other_encoders_pngs_decode_like_pillow(shape, level):
    pixels = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    # Smooth ramps too, so the encoder picks every filter type (Sub, Up, Average, Paeth).
    pixels[: shape[0] // 2] = np.arange(shape[1], dtype=np.uint8).reshape((1, shape[1]) + (1,) * (len(shape) - 2)) * 7
    payload = _png(Image.fromarray(pixels), compress_level=level)
    assert len(set(_filter_types(payload, shape))) > 1 or level == 0  # Pillow mixes filters per row

    fast = decode_png(payload, DecodeLimits().max_pixels)

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

    assert decode_png(payload, DecodeLimits().max_pixels) is None
    assert decode_message(_message(payload)).image.shape[:2] == (12, 10)


def test_a_stream_that_inflates_beyond_its_header_is_not_decoded_here():
    import struct
    import zlib

    small = encode_png(np.zeros((4, 4), dtype=np.uint8))
    start = small.index(b"IDAT")
    huge = zlib.compress(bytes(10_000_000))  # 10 MB of scanlines for a 4x4 image
    idat = b"IDAT" + huge
    forged = (small[:start - 4] + struct.pack(">I", len(huge)) + idat
              + struct.pack(">I", zlib.crc32(idat)) + small[small.index(b"IEND") - 4:])
    assert decode_png(forged, DecodeLimits().max_pixels) is None


def _text_chunk() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "hello")
    return info


def test_damaged_or_oversized_pngs_are_left_to_pillow():
    payload = _png(Image.fromarray(np.zeros((8, 8), dtype=np.uint8)))
    flipped = bytearray(payload)
    flipped[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert decode_png(bytes(flipped), DecodeLimits().max_pixels) is None
    assert decode_png(payload[:-12], DecodeLimits().max_pixels) is None  # no IEND
    assert decode_png(payload, 63) is None
    with pytest.raises(MessageDecodeError, match="exceed the limit"):
        decode_message(_message(payload), limits=DecodeLimits(max_pixels=63))
    with pytest.raises(MessageDecodeError, match="cannot decode image"):
        decode_message(_message(payload[:30]))
