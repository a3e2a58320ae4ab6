"""What the throughput benchmark sends: real MNIST digits, and photo-like JPEGs."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

PHOTO_SIZE = (640, 480)  # width, height of the photos sent
PHOTO_MODEL_SIDE = 224
#: Distinct photos generated; repeated, each message with its own id, up to --photo-images.
PHOTO_DISTINCT = 48


def load_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real MNIST digits (uint8, N x 28 x 28) and labels, the 5,000 repeated as needed."""
    from vectorai.datasets import load_dataset

    with tempfile.TemporaryDirectory() as empty:  # an empty root: always the built-in
        data = load_dataset("mnist-sample", Path(empty))
    index = np.arange(count) % len(data)
    return np.ascontiguousarray(data.images[index]), data.labels[index]


def jpeg(image, quality: int = 85) -> bytes:
    """A Pillow image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_photos(count: int, seed: int = 0) -> list[bytes]:
    """``count`` photo-like 640x480 JPEGs (quality 85): smooth shapes of colour and sensor grain,
    which compress and decode like photographs do (pure noise would not)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(PHOTO_SIZE, Image.BICUBIC), dtype=np.float32)
        grainy = np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8)
        photos.append(jpeg(Image.fromarray(grainy)))
    return photos


def upscaled_digits(images: np.ndarray) -> list[bytes]:
    """Digits upscaled to 640x480 RGB JPEGs (quality 85)."""
    from PIL import Image

    return [jpeg(Image.fromarray(digit).resize(PHOTO_SIZE, Image.BICUBIC).convert("RGB")) for digit in images]
