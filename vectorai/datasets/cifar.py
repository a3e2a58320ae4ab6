"""The CIFAR-10 python archive, opened only once the downloader has verified its checksum.

Its batches are pickles, and a pickle can run code: the archive's bytes must match the digest
the downloader recorded, and a restricted unpickler that rebuilds numpy arrays and nothing else
is the second line of defence.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vectorai.datasets.labelled import LabelledImages
from vectorai.download import CIFAR10_SHA256, read_checksum_sidecar
from vectorai.errors import DatasetError

log = logging.getLogger(__name__)

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of plain values and numpy arrays, and nothing else.

    A pickle can call any importable function; this one may only rebuild ndarrays. Globals are
    resolved from our own table, not imported by name, so ``numpy.core`` deprecation shims and
    look-alike modules never come into play.
    """

    _ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays "
                                         "are allowed in a CIFAR batch")
        return resolve()


def _unpickle_numpy_only(data: bytes) -> Any:
    # encoding="bytes": the official batches were pickled by Python 2, and their keys are bytes.
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_verified_cifar_archive(archive: Path) -> bytes:
    """The archive's bytes, only if the downloader verified them and they have not changed since.

    The CIFAR format is pickle, and a pickle can run code; so we only open bytes whose SHA-256
    the downloader checked against the official checksum (or the one it was explicitly given)
    and recorded in ``<archive>.sha256``. The bytes are hashed and parsed from one in-memory
    copy, so the file cannot be swapped between the check and the use. The restricted
    unpickler is a second line of defence.
    """
    recorded = read_checksum_sidecar(archive)
    if recorded is None:
        raise DatasetError(archive, f"no verified checksum beside it ({archive.name}.sha256); "
                                    "CIFAR-10 batches are pickles, so only an archive fetched "
                                    "by `vectorai-download cifar10` is opened")
    try:
        raw = archive.read_bytes()
    except OSError as err:
        raise DatasetError(archive, f"cannot read: {err}") from err
    actual = hashlib.sha256(raw).hexdigest()
    if actual != recorded:
        raise DatasetError(archive, f"SHA-256 is {actual} but {recorded} was verified at "
                                    "download; the file changed, run `vectorai-download "
                                    "cifar10` again")
    if actual != CIFAR10_SHA256:
        log.info("%s: not the official CIFAR-10 archive, but verified by the downloader "
                 "against the checksum it was given", archive)
    return raw


def _read_member(tar: tarfile.TarFile, archive: Path, name: str) -> Any:
    member_name = f"{_CIFAR10_DIR}/{name}"
    try:
        member = tar.getmember(member_name)
    except KeyError:
        raise DatasetError(archive, f"{member_name} is missing from the archive") from None
    handle = tar.extractfile(member)
    if handle is None:
        raise DatasetError(archive, f"{member_name} is not a regular file")
    try:
        return _unpickle_numpy_only(handle.read())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise DatasetError(archive, f"{member_name} is not a valid CIFAR batch: {err}") from err


def load_cifar10(archive: Path) -> LabelledImages:
    """The official ``cifar-10-python.tar.gz`` (all five training batches plus the test batch)."""
    raw = _read_verified_cifar_archive(archive)
    images, labels = [], []
    try:
        # Members are read in memory (extractfile), never extracted, so paths in the tar
        # cannot write anywhere.
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            meta = _read_member(tar, archive, "batches.meta")
            for name in _CIFAR10_BATCHES:
                batch = _read_member(tar, archive, name)
                batch_images, batch_labels = _cifar_batch_arrays(archive, name, batch)
                images.append(batch_images)
                labels.append(batch_labels)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DatasetError(archive, f"corrupt or truncated archive: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get(b"label_names"), list):
        raise DatasetError(archive, "batches.meta has no b'label_names' list")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                   for n in meta[b"label_names"]]
    return LabelledImages(np.concatenate(images), np.concatenate(labels), class_names)


def _cifar_batch_arrays(archive: Path, name: str, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(archive, f"{name} is not a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(archive, f"{name}: b'data' must be uint8 (N, 3072), got "
                                    f"{getattr(data, 'dtype', type(data).__name__)} "
                                    f"{getattr(data, 'shape', '')}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(archive, f"{name}: b'labels' must be a list of integers")
    if len(labels) != len(data):
        raise DatasetError(archive, f"{name}: {len(data)} images but {len(labels)} labels")
    # Rows are 1024 red, 1024 green, 1024 blue values; channels-last is what everything else uses.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)
