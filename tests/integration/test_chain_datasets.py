"""TrainModel and ExportOnnx on the other dataset forms, written by the tests in the official
formats: a class-folder dataset of colour PNGs of another size, MNIST IDX files, and CIFAR-10
downloaded (checksum-verified) from a loopback HTTP server."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
from PIL import Image

from tests.conftest import new_project
from tests.http_files import cifar_archive_bytes
from vectorai.download import download_dataset


def exported(project) -> dict:
    [model_json] = (project.root / "models").glob("*/onnx/model.json")
    return json.loads(model_json.read_text())


def test_class_folders_of_colour_pngs(tmp_path):
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    root = tmp_path / "home" / "data" / "external" / "shapes"
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(40):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (37, 45, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    project = new_project(tmp_path / "home")
    project.luigi("ExportOnnx", "--dataset", "shapes", "--stream-size", "6",
                  "--image-size", "16", "--channels", "3", "--epochs", "6", "--batch-size", "16")
    info = exported(project)
    assert info["class_names"] == ["blue", "green", "red"]
    assert info["preprocess"] == {"height": 16, "width": 16, "channels": 3}
    assert info["parity"]["argmax_mismatches"] == 0 and info["test_accuracy"] >= 0.9


def write_idx(path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    root = tmp_path / "home" / "data" / "external" / "mnist"
    root.mkdir(parents=True)
    write_idx(root / "train-images-idx3-ubyte.gz", images[:1500])
    write_idx(root / "train-labels-idx1-ubyte.gz", labels[:1500])
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[1500:])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[1500:])
    project = new_project(tmp_path / "home")
    project.luigi("ExportOnnx", "--dataset", "mnist", "--stream-size", "50",
                  "--image-size", "8", "--epochs", "8")
    info = exported(project)
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["test_accuracy"] >= 0.8


def test_cifar10_downloaded_from_loopback(tmp_path, server):
    remote = server.add("cifar-10-python.tar.gz", cifar_archive_bytes(per_batch=40, learnable=True))
    project = new_project(tmp_path / "home")
    download_dataset("cifar10", project.data / "external", files=[remote], progress=False, timeout_s=10)
    project.luigi("ExportOnnx", "--dataset", "cifar10", "--stream-size", "10",
                  "--image-size", "32", "--channels", "3", "--epochs", "6", "--batch-size", "16")
    info = exported(project)
    assert len(info["class_names"]) == 10
    assert info["preprocess"]["channels"] == 3 and info["test_accuracy"] >= 0.8
