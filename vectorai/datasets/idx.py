"""MNIST and Fashion-MNIST: IDX files, plain or gzipped, in train/t10k pairs."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vectorai.datasets.labelled import LabelledImages
from vectorai.errors import DatasetError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ file format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Refuse headers claiming absurd sizes before allocating anything (MNIST is 47 MB).
_IDX_MAX_BYTES = 4 << 30


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(images, labels) file pairs present in ``folder``, train before t10k."""
    pairs = []
    for prefix in ("train", "t10k"):
        images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            present = images or labels
            missing = f"{prefix}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte[.gz]"
            raise DatasetError(present, f"its partner {missing} is missing from {folder}")
        pairs.append((images, labels))
    return pairs


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip), checking the header against the payload size."""
    gzipped = path.suffix == ".gz"
    try:
        with path.open("rb") as raw:
            raw_size = raw.seek(0, io.SEEK_END)
            gz_size_mod_2_32 = None
            if gzipped and raw_size >= 4:
                # gzip's trailer holds the uncompressed size mod 2**32: a cheap size check
                # that catches truncated downloads before decompressing anything.
                raw.seek(-4, io.SEEK_END)
                gz_size_mod_2_32 = struct.unpack("<I", raw.read(4))[0]
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore
            return _parse_idx(path, stream, None if gzipped else raw_size, gz_size_mod_2_32)
    except (OSError, EOFError, zlib.error) as err:
        # BadGzipFile is an OSError; EOFError is a gzip stream cut short.
        raise DatasetError(path, f"corrupt or truncated: {err}") from err


def _parse_idx(path: Path, stream: BinaryIO, file_size: int | None,
               gz_size_mod_2_32: int | None) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) == 0:
        raise DatasetError(path, "is empty")
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise DatasetError(path, f"wrong magic number {magic.hex()}; not an IDX file")
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    ndim = magic[3]
    if ndim == 0:
        raise DatasetError(path, "IDX header declares zero dimensions")
    dims_raw = stream.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DatasetError(path, "truncated inside the IDX header")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    header_size = 4 + 4 * ndim
    payload = int(np.prod(dims, dtype=np.uint64)) * dtype.itemsize
    if payload > _IDX_MAX_BYTES:
        raise DatasetError(path, f"header claims {payload} bytes of data {dims}; refusing")
    actual = None
    if file_size is not None:
        actual = file_size - header_size
    elif gz_size_mod_2_32 is not None and gz_size_mod_2_32 != (header_size + payload) % (1 << 32):
        raise DatasetError(path, f"truncated or corrupt: header shape {dims} needs "
                                 f"{header_size + payload} bytes uncompressed, gzip trailer "
                                 f"says {gz_size_mod_2_32}")
    if actual is not None and actual != payload:
        problem = "truncated" if actual < payload else "has trailing bytes"
        raise DatasetError(path, f"{problem}: header shape {dims} needs {payload} data bytes, "
                                 f"file has {actual}")
    data = stream.read(payload)
    if len(data) != payload:
        raise DatasetError(path, f"truncated: expected {payload} data bytes, got {len(data)}")
    if stream.read(1):
        raise DatasetError(path, f"has trailing bytes after the {payload} the header declares")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx(folder: Path) -> LabelledImages:
    """MNIST-style IDX pairs in ``folder`` (train and t10k concatenated; we split ourselves)."""
    pairs = idx_pairs(folder)
    if not pairs:
        raise DatasetError(folder, "no train-/t10k- images-idx3-ubyte[.gz] files")
    all_images, all_labels = [], []
    for images_path, labels_path in pairs:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3:
            raise DatasetError(images_path, f"expected (N, H, W) images, got shape {images.shape}")
        if labels.ndim != 1:
            raise DatasetError(labels_path, f"expected (N,) labels, got shape {labels.shape}")
        if len(images) != len(labels):
            raise DatasetError(labels_path, f"{len(labels)} labels for {len(images)} images "
                                            f"in {images_path.name}")
        if all_images and images.shape[1:] != all_images[0].shape[1:]:
            raise DatasetError(images_path, f"image size {images.shape[1:]} differs from "
                                            f"{all_images[0].shape[1:]} in the other file")
        all_images.append(images)
        all_labels.append(labels.astype(np.int64))
    labels = np.concatenate(all_labels)
    is_fashion = "fashion" in folder.resolve().name.lower()
    if is_fashion:
        class_names = list(FASHION_MNIST_CLASSES)
    else:
        class_names = [str(i) for i in range(max(10, int(labels.max()) + 1))]
    return LabelledImages(np.concatenate(all_images), labels, class_names)
