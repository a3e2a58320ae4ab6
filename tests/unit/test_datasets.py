"""Dataset loaders on tiny data written by the tests, including the broken inputs."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vectorai.datasets import (
    FASHION_MNIST_CLASSES,
    LabelledImages,
    load_dataset,
    read_idx,
)
from vectorai.download import sha256_of, write_checksum_sidecar
from vectorai.errors import DatasetError

# ------------------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as officially laid out: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)


def write_cifar_archive(folder: Path, *, per_batch: int = 4, payload: object = None) -> Path:
    """A cifar-10-python.tar.gz in the official layout (pickled dicts with bytes keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    archive = folder / "cifar-10-python.tar.gz"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(archive, "w:gz") as tar:
        def add(name: str, obj: object) -> None:
            data = pickle.dumps(obj, protocol=3)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat",
                                              b"deer", b"dog", b"frog", b"horse", b"ship",
                                              b"truck"],
                             b"num_cases_per_batch": per_batch})
        for name in names:
            batch = payload if payload is not None and name == "test_batch" else {
                b"batch_label": name.encode(),
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
            }
            add(name, batch)
    return archive


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_train_and_t10k(tmp_path: Path, gz: bool) -> None:
    write_idx_folder(tmp_path / "mnist", gz=gz)
    data = load_dataset("mnist", tmp_path)
    assert isinstance(data.images, np.ndarray)
    assert data.images.shape == (18, 28, 28) and data.images.dtype == np.uint8
    assert data.class_names == [str(d) for d in range(10)]
    assert data.labels.dtype == np.int64
    assert list(data.labels[:12]) == [i % 10 for i in range(12)]


def test_idx_fashion_names(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "fashion-mnist", gz=True)
    assert load_dataset("fashion-mnist", tmp_path).class_names == FASHION_MNIST_CLASSES


def test_idx_truncated_plain(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value)


def test_idx_truncated_gz(tmp_path: Path) -> None:
    write_idx_folder(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_idx_wrong_magic_and_empty(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x89PNG" + b"\0" * 20)
    with pytest.raises(DatasetError, match="magic") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)
    empty = tmp_path / "empty-idx3-ubyte"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        read_idx(empty)


def test_idx_not_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        read_idx(bad)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 4, 4))))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 0, 1])))
    with pytest.raises(DatasetError, match="4 labels for 5 images") as err:
        load_dataset("mnist", tmp_path)
    assert "train-labels-idx1-ubyte" in str(err.value)


def test_idx_missing_partner(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 4, 4))))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


def test_idx_one_class(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 4, 4))))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([7, 7, 7])))
    with pytest.raises(DatasetError, match="at least two") as err:
        load_dataset("mnist", tmp_path)
    assert "mnist" in str(err.value)


# ------------------------------------------------------------------------------------- CIFAR-10


def test_cifar_with_verified_sidecar(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "cifar10")
    write_checksum_sidecar(archive, sha256_of(archive))
    data = load_dataset("cifar10", tmp_path)
    assert isinstance(data.images, np.ndarray)
    assert data.images.shape == (24, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10
    # Channel planes become the last axis: pixel (0, 0) red is data[0], green data[1024].
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("cifar-10-batches-py/data_batch_1")
        assert handle is not None
        first = pickle.loads(handle.read())[b"data"][0]
    assert tuple(data.images[0, 0, 0]) == (first[0], first[1024], first[2048])


def test_cifar_refused_without_sidecar(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path / "cifar10")
    with pytest.raises(DatasetError, match="verified checksum") as err:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-python.tar.gz" in str(err.value)


def test_cifar_refused_when_changed_after_verification(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "cifar10")
    write_checksum_sidecar(archive, "0" * 64)
    with pytest.raises(DatasetError, match="changed"):
        load_dataset("cifar10", tmp_path)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_cifar_refuses_non_numpy_globals_even_if_verified(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "cifar10", payload={b"data": _Exploit()})
    write_checksum_sidecar(archive, sha256_of(archive))
    with pytest.raises(DatasetError, match="refusing to load") as err:
        load_dataset("cifar10", tmp_path)
    assert "test_batch" in str(err.value)


def test_cifar_corrupt_archive(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    archive = folder / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    write_checksum_sidecar(archive, sha256_of(archive))
    with pytest.raises(DatasetError, match="corrupt") as err:
        load_dataset("cifar10", tmp_path)
    assert "cifar-10-python.tar.gz" in str(err.value)


# ------------------------------------------------------------------------------------- folders


def test_class_folders_mixed_sizes_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    rng = np.random.default_rng(2)
    write_png(root / "cats" / "a.png", rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    write_png(root / "cats" / "b.png", rng.integers(0, 256, (7, 5, 4), dtype=np.uint8))  # RGBA
    (root / "dogs").mkdir()
    Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).save(root / "dogs" / "c.jpg")
    Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(root / "dogs" / "d.JPEG",
                                                                       format="JPEG")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0\0junk")
    (root / ".hidden").mkdir()
    data = load_dataset("shapes", tmp_path)
    assert data.class_names == ["cats", "dogs"]
    assert list(data.labels) == [0, 0, 1, 1]
    assert isinstance(data.images, list)
    assert [im.shape for im in data.images] == [(13, 17, 3), (7, 5, 3), (9, 11), (6, 6)]
    assert all(im.dtype == np.uint8 for im in data.images)


def test_class_folders_uniform_sizes_stack(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    for cls in ("a", "b"):
        for i in range(2):
            write_png(root / cls / f"{i}.png", np.full((4, 4), i * 50, dtype=np.uint8))
    data = load_dataset("tiny", tmp_path)
    assert isinstance(data.images, np.ndarray) and data.images.shape == (4, 4, 4)


def test_class_folders_unreadable_image(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    write_png(root / "a" / "ok.png", np.zeros((3, 3), dtype=np.uint8))
    (root / "b").mkdir()
    (root / "b" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable image") as err:
        load_dataset("broken", tmp_path)
    assert "bad.png" in str(err.value)


def test_class_folders_truncated_image(tmp_path: Path) -> None:
    root = tmp_path / "cut"
    write_png(root / "a" / "ok.png", np.zeros((3, 3), dtype=np.uint8))
    write_png(root / "b" / "cut.png", np.random.default_rng(3).integers(0, 256, (64, 64, 3),
                                                                         dtype=np.uint8))
    path = root / "b" / "cut.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cut.png"):
        load_dataset("cut", tmp_path)


def test_class_folders_one_class_and_empty_class(tmp_path: Path) -> None:
    write_png(tmp_path / "one" / "only" / "x.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="only one class"):
        load_dataset("one", tmp_path)
    write_png(tmp_path / "two" / "a" / "x.png", np.zeros((3, 3), dtype=np.uint8))
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(DatasetError, match="no .png") as err:
        load_dataset("two", tmp_path)
    assert str(tmp_path / "two" / "b") in str(err.value)


# ------------------------------------------------------------------------------------- npz


def test_npz_file_and_folder(tmp_path: Path) -> None:
    x = np.arange(4 * 5 * 5, dtype=np.uint8).reshape(4, 5, 5)
    y = np.array([0, 1, 2, 1])
    np.savez(tmp_path / "a.npz", x=x, y=y, class_names=np.array(["r", "g", "b"]))
    data = load_dataset(str(tmp_path / "a.npz"), tmp_path / "elsewhere")
    assert data.class_names == ["r", "g", "b"] and np.array_equal(data.images, x)
    folder = tmp_path / "set"
    folder.mkdir()
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "stream_sample.npz", x=x[:1], y=y[:1])
    data = load_dataset("set", tmp_path)
    assert data.class_names == ["0", "1", "2"] and len(data) == 4


def test_npz_refuses_object_arrays_and_bad_content(tmp_path: Path) -> None:
    objects = tmp_path / "obj.npz"
    np.savez(objects, x=np.array([np.zeros(3), np.zeros(4)], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="obj.npz"):
        load_dataset(str(objects), tmp_path)
    missing = tmp_path / "missing.npz"
    np.savez(missing, images=np.zeros((2, 3, 3)))
    with pytest.raises(DatasetError, match="missing array"):
        load_dataset(str(missing), tmp_path)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((3, 3, 3)), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        load_dataset(str(mismatch), tmp_path)
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, x=np.zeros((2, 3, 3)), y=np.array([0, 5]),
             class_names=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match="labels span 0..5"):
        load_dataset(str(out_of_range), tmp_path)


def test_npz_corrupt_truncated_empty(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((2, 3, 3)), y=np.array([0, 1]))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:150])
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04" + b"x" * 50)
    for path in (truncated, empty, corrupt):
        with pytest.raises(DatasetError) as err:
            load_dataset(str(path), tmp_path)
        assert path.name in str(err.value)
    no_images = tmp_path / "none.npz"
    np.savez(no_images, x=np.zeros((0, 3, 3)), y=np.zeros(0, dtype=np.int64))
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(str(no_images), tmp_path)


# ------------------------------------------------------------------------------------- built-ins


def test_mnist_sample_builtin(tmp_path: Path) -> None:
    data = load_dataset("mnist-sample", tmp_path)
    assert isinstance(data.images, np.ndarray)
    assert data.images.shape == (5000, 28, 28) and data.images.dtype == np.uint8
    assert len(data.class_names) == 10
    assert np.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255


def test_digits_builtin(tmp_path: Path) -> None:
    data = load_dataset("digits", tmp_path)
    assert data.images.shape == (1797, 8, 8) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and len(np.unique(data.labels)) == 10


def test_folder_overrides_builtin_name(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    np.savez(folder / "digits.npz", x=np.zeros((2, 3, 3)), y=np.array([0, 1]))
    assert len(load_dataset("digits", tmp_path)) == 2


# ------------------------------------------------------------------------------------- legacy


def test_legacy_pickle_needs_opt_in(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    with (folder / "train.p").open("wb") as f:
        pickle.dump({"features": np.zeros((4, 3, 3, 3), np.uint8), "labels": [0, 1, 0, 1]}, f)
    with (folder / "test.p").open("wb") as f:
        pickle.dump((np.ones((2, 3, 3, 3), np.uint8), np.array([1, 0])), f)
    with pytest.raises(DatasetError, match="allow_legacy_pickle") as err:
        load_dataset("old", tmp_path)
    assert "test.p" in str(err.value)
    with pytest.warns(UserWarning, match="legacy pickle"):
        data = load_dataset("old", tmp_path, allow_legacy_pickle=True)
    assert len(data) == 6 and data.class_names == ["0", "1"]


def test_legacy_pickle_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.p"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="bad.p"):
        load_dataset(str(path), tmp_path, allow_legacy_pickle=True)


# ------------------------------------------------------------------------------------- resolution


def test_missing_dataset_explains_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("nope", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "nope") in message
    assert "mnist-sample" in message and "digits" in message
    assert "vectorai-download" in message and "cifar10" in message


def test_unrecognised_folder(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no dataset recognised"):
        load_dataset("stuff", tmp_path)


def test_subset_keeps_order_and_names() -> None:
    data = LabelledImages([np.zeros((2, 2)), np.ones((3, 3)), np.full((1, 1), 2.0)],
                          np.array([0, 1, 0]), ["a", "b"])
    part = data.subset([2, 0])
    assert len(part) == 2 and part.class_names == ["a", "b"]
    assert isinstance(part.images, list) and part.images[0].shape == (1, 1)
    stacked = LabelledImages(np.arange(12).reshape(3, 2, 2), np.array([0, 1, 1]), ["a", "b"])
    assert stacked.subset(np.array([1])).images.shape == (1, 2, 2)
