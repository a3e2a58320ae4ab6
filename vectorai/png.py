"""A small PNG codec for the images this pipeline streams: 8-bit greyscale, RGB or RGBA.

Why not Pillow for everything: for a 28x28 image Pillow spends ~100 µs per image in Python
(chunk parsing, Image objects, buffer copies) around ~5 µs of actual inflating, which made
decoding cost as much as classifying. The encoder here filters every row of an image with the
same filter (None, Sub or Up, whichever leaves the smallest residuals), so the decoder can undo
it with one vectorised cumulative sum instead of a loop over rows, for a whole batch of images
at once. The files are ordinary PNGs that any viewer reads, and PNGs from other encoders still
decode (through Pillow).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple, Sequence

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type per channel count, and back.
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}
_CHANNELS = {0: 1, 2: 3, 6: 4}
_NONE, _SUB, _UP = 0, 1, 2


def encode_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: its length, its type (``b"IDAT"``), the data and their CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, C) image with C in 1, 3, 4."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"encode_png needs a uint8 H,W or H,W,C array, got {image.dtype} {image.shape}")
    pixels = image.reshape(image.shape[0], image.shape[1], -1)
    height, width, channels = pixels.shape
    if channels not in _COLOUR_TYPES or not height or not width:
        raise ValueError(f"encode_png cannot store an image of shape {image.shape}")
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    # uint8 arithmetic wraps modulo 256, which is exactly PNG's filter arithmetic.
    sub = rows.copy()
    sub[:, channels:] -= rows[:, :-channels]
    up = rows.copy()
    up[1:] -= rows[:-1]
    # The usual PNG heuristic: the filter whose residuals, read as signed bytes, are smallest.
    candidates = ((_NONE, rows), (_SUB, sub), (_UP, up))
    kind, filtered = min(candidates, key=lambda c: int(np.abs(c[1].view(np.int8).astype(np.int16)).sum()))
    scanlines = np.empty((height, width * channels + 1), dtype=np.uint8)
    scanlines[:, 0] = kind
    scanlines[:, 1:] = filtered
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join((SIGNATURE, encode_chunk(b"IHDR", header),
                     encode_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), level)), encode_chunk(b"IEND", b"")))


class Scanlines(NamedTuple):
    """An inflated PNG whose rows all use one filter: what ``unfilter`` turns into pixels."""

    height: int
    width: int
    channels: int
    kind: int
    data: bytes  # height rows, each a filter byte then width * channels bytes


def inflate_png(payload: bytes, max_pixels: int) -> Scanlines | np.ndarray | None:
    """The first half of decoding the common PNG: 8-bit greyscale, RGB or RGBA, not interlaced,
    chunks IHDR, IDAT and IEND only, every CRC right.

    Returns the inflated Scanlines when every row uses the same filter (as ``encode_png``
    writes them), so that ``unfilter`` can undo the filter for a whole batch of images in one
    numpy call; the pixels, through Pillow's C inflate-and-unfilter decoder alone, for other
    filter mixes (Image.open would parse the chunks again in Python); None when this is not
    the common PNG (a palette, 16 bits, interlacing, another chunk, a bad CRC, a truncated
    stream, too many pixels): the caller then decodes with Image.open, which also words the
    error. Never inflates more than the image the header declares.
    """
    parsed = _parse_simple(payload, max_pixels)
    if parsed is None:
        return None
    width, height, channels, compressed = parsed
    stride = width * channels + 1
    expected = height * stride
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, expected + 1)
    except zlib.error:
        return None
    if len(raw) != expected or not inflater.eof:
        return None
    kinds = raw[::stride]  # each scanline's filter byte (bytes ops: far cheaper than numpy here)
    kind = kinds[0]
    if kind not in (_NONE, _SUB, _UP) or kinds.count(kind) != height:
        return _decode_with_pillow(width, height, channels, compressed)
    return Scanlines(height, width, channels, kind, raw)


def unfilter(images: Sequence[Scanlines]) -> np.ndarray:
    """(N, H, W, C) uint8 pixels of images that share one height, width and channel count.

    One numpy call per filter kind for the whole batch: per image, the reshaping and the
    cumulative sum cost more than inflating it."""
    first = images[0]
    stride = first.width * first.channels + 1
    rows = np.frombuffer(b"".join([image.data for image in images]), dtype=np.uint8)
    rows = rows.reshape(len(images), first.height, stride)[:, :, 1:]
    pixels = rows.reshape(len(images), first.height, first.width, first.channels)
    kinds = np.fromiter([image.kind for image in images], dtype=np.uint8, count=len(images))
    if not kinds.any():
        return pixels  # every image unfiltered: the rows are the pixels (a read-only view)
    out = pixels.copy()
    for kind, axis in ((_SUB, 2), (_UP, 1)):
        chosen = kinds == kind
        if chosen.any():
            # uint8 arithmetic wraps modulo 256, which is exactly PNG's filter arithmetic.
            out[chosen] = np.cumsum(pixels[chosen], axis=axis, dtype=np.uint8)
    return out


def image_of(scanlines: Scanlines) -> np.ndarray:
    """One image's pixels: H,W for greyscale, else H,W,C."""
    pixels = unfilter([scanlines])[0]
    return pixels[:, :, 0] if scanlines.channels == 1 else pixels


def decode_png(payload: bytes, max_pixels: int) -> np.ndarray | None:
    """Pixels of the common PNG (see ``inflate_png``), H,W for greyscale else H,W,C; else None."""
    inflated = inflate_png(payload, max_pixels)
    return image_of(inflated) if isinstance(inflated, Scanlines) else inflated


def _parse_simple(payload: bytes, max_pixels: int) -> tuple[int, int, int, bytes] | None:
    """(width, height, channels, IDAT bytes) of a PNG the fast path can decode, else None."""
    if not payload.startswith(SIGNATURE):
        return None
    view = memoryview(payload)
    pos, end = len(SIGNATURE), len(payload)
    header = None
    idat: list[memoryview] = []
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", payload, pos)
        data_end = pos + 8 + length
        if data_end + 4 > end or zlib.crc32(view[pos + 4:data_end]) != struct.unpack_from(">I", payload, data_end)[0]:
            return None
        if header is None:
            if kind != b"IHDR" or length != 13:
                return None
            header = struct.unpack_from(">IIBBBBB", payload, pos + 8)
        elif kind == b"IDAT":
            idat.append(view[pos + 8:data_end])
        elif kind == b"IEND":
            break
        else:
            return None
        pos = data_end + 4
    else:
        return None  # no IEND: truncated
    width, height, depth, colour, compression, filtering, interlace = header
    channels = _CHANNELS.get(colour)
    if channels is None or depth != 8 or compression or filtering or interlace or not idat:
        return None
    if not 0 < width * height <= max_pixels:
        return None
    return width, height, channels, b"".join(idat)


def _decode_with_pillow(width: int, height: int, channels: int, compressed: bytes) -> np.ndarray | None:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    try:
        image = Image.frombytes(mode, (width, height), compressed, "zip", mode)
    except (ValueError, OSError, zlib.error):
        return None
    return np.asarray(image)
