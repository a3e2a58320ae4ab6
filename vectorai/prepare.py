"""Turn a dataset into the files the pipeline uses: train/val/test splits and a stream sample.

The stream sample is ``<dataset folder>/stream_sample.npz`` when the user supplies one (``x``,
optional ``y``), otherwise images held out of training and of the test split, chosen by content
as the test split is (see ``vectorai.split``): no model of the dataset learnt from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectorai.datasets import LabelledImages, load_dataset
from vectorai.errors import DatasetError
from vectorai.split import SPLIT_RULE, image_digests, load_images, save_images, set_digest, split_indices

STREAM_SAMPLE = "stream_sample.npz"
#: A split's copy of the images ``--extra-train`` added to its training split.
EXTRA_TRAIN = "extra_train.npz"
UNLABELLED = -1


@dataclass(frozen=True)
class Splits:
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages


def make_splits(
    dataset: str,
    external_root: Path,
    out_dir: Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stream_size: int,
    allow_legacy_pickle: bool = False,
) -> dict[str, object]:
    """Write train.npz, val.npz, test.npz, stream.npz and split.json into ``out_dir``."""
    data = load_dataset(dataset, external_root, allow_legacy_pickle=allow_legacy_pickle)
    digests = image_digests(data.images)
    supplied = _supplied_stream_sample(dataset, external_root)
    split = split_indices(data.labels, digests, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                          stream_size=0 if supplied is not None else stream_size, class_names=data.class_names)
    if supplied is not None:
        stream = load_stream_sample(supplied)
        stream_source = str(supplied)
    else:
        # Held out of training like the test split, and as seed-independent: every model of the
        # dataset is measured on images it never saw.
        stream = data.subset(split.stream)
        stream_source = "held out of training, by content digest"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        save_images(out_dir / f"{name}.npz", data.subset(getattr(split, name)))
    save_images(out_dir / "stream.npz", stream)
    summary = {
        "dataset": dataset, "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
        "split_rule": SPLIT_RULE, "test_digest": set_digest(digests[i] for i in split.test),
        "class_names": list(data.class_names), "sizes": {"train": len(split.train), "val": len(split.val),
                                                         "test": len(split.test), "stream": len(stream)},
        "stream_source": stream_source,
    }
    (out_dir / "split.json").write_text(json.dumps(summary, indent=2))
    return summary


def _supplied_stream_sample(dataset: str, external_root: Path) -> Path | None:
    for folder in (external_root / dataset, Path(dataset)):
        if folder.is_dir() and (folder / STREAM_SAMPLE).is_file():
            return folder / STREAM_SAMPLE
    return None


def load_splits(split_dir: Path) -> Splits:
    return Splits(*(load_images(split_dir / f"{name}.npz") for name in ("train", "val", "test")))


def extra_train_mask(split_dir: Path, train_images: np.ndarray | None = None) -> np.ndarray | None:
    """Which of the split's training images were added by ``--extra-train`` (matched by content
    digest with its ``extra_train.npz``); None for a split without any. ``train_images``: the
    split's training images when the caller has them loaded already."""
    path = Path(split_dir) / EXTRA_TRAIN
    if not path.is_file():
        return None
    extra = set(image_digests(load_images(path).images))
    if train_images is None:
        train_images = load_images(Path(split_dir) / "train.npz").images
    return np.array([digest in extra for digest in image_digests(train_images)], dtype=bool)


def trained_on_digests(split_dir: Path) -> list[str]:
    """Content digests of the images a model of this split learns from (train and validation)."""
    return [d for name in ("train", "val") for d in image_digests(load_images(split_dir / f"{name}.npz").images)]


def split_tags(split_dir: Path) -> dict[str, str]:
    """What a registered version records of its split: the rule and the test split's digest and size."""
    summary = json.loads((split_dir / "split.json").read_text())
    return {"split_rule": str(summary.get("split_rule", 1)), "split_test_digest": str(summary.get("test_digest", "")),
            "split_test_images": str(summary["sizes"]["test"])}


def load_stream_sample(path: Path, limit: int | None = None) -> LabelledImages:
    """The images to stream: a split's ``stream.npz`` or a user's ``.npz`` with ``x`` and an
    optional ``y`` (missing labels become -1: the messages then carry no label)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "x" in keys:
                images = archive["x"]
                labels = archive["y"].astype(np.int64) if "y" in keys else np.full(len(images), UNLABELLED)
                data = LabelledImages(images, labels, [])
            else:
                data = None
    except FileNotFoundError:
        raise DatasetError(path, "stream sample not found") from None
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(path, f"not a readable .npz of plain arrays: {err}") from None
    if data is None:
        data = load_images(path)
    if isinstance(data.images, np.ndarray) and data.images.ndim not in (3, 4):
        raise DatasetError(path, f"x has shape {data.images.shape}; expected (N, H, W[, C])")
    if len(data.images) != len(data.labels):
        raise DatasetError(path, f"{len(data.images)} images but {len(data.labels)} labels")
    if limit is not None:
        data = data.subset(np.arange(min(limit, len(data))))
    return data
