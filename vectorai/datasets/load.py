"""``load_dataset``: find a dataset by name and decide from what is on disk which loader reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vectorai.datasets.builtin import BUILTIN_DATASETS, load_builtin
from vectorai.datasets.cifar import CIFAR10_ARCHIVE, load_cifar10
from vectorai.datasets.folders import load_class_folders
from vectorai.datasets.idx import idx_pairs, load_idx
from vectorai.datasets.labelled import LabelledImages, check_dataset, visible
from vectorai.datasets.legacy import LEGACY_PICKLE_SUFFIXES, load_legacy_pickle
from vectorai.datasets.npz import load_npz
from vectorai.errors import DatasetError

DOWNLOADABLE_DATASETS = ("mnist", "fashion-mnist", "cifar10")

# Reserved for the stream sample the pipeline writes beside a dataset; never a training set.
STREAM_SAMPLE_FILE = "stream_sample.npz"


def load_dataset(name: str, root: Path, *, allow_legacy_pickle: bool = False) -> LabelledImages:
    """Load the dataset ``name``: a built-in, a folder or file under ``root``, or a path.

    ``root`` is where downloaded and hand-placed datasets live (``data/external``).
    """
    root = Path(root)
    under_root = root / name
    if name in BUILTIN_DATASETS and not under_root.exists():
        return check_dataset(load_builtin(name), name)
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
    return check_dataset(loader(), target)


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

    if idx_pairs(target):
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
        p.name for p in visible(target.glob("*.npz")) if p.name != STREAM_SAMPLE_FILE
    )
    if other_npz:
        raise DatasetError(target, f"found {', '.join(other_npz)}; name the dataset file "
                                   f"data.npz or {target.name}.npz, or pass its path")
    pickles = sorted(p for p in visible(target.iterdir())
                     if p.is_file() and p.suffix.lower() in LEGACY_PICKLE_SUFFIXES)
    if pickles:
        return lambda: load_legacy_pickle(pickles, allow_legacy_pickle)
    if any(p.is_dir() for p in visible(target.iterdir())):
        return lambda: load_class_folders(target)
    raise DatasetError(
        target,
        "no dataset recognised: expected MNIST-style IDX files, " + CIFAR10_ARCHIVE
        + ", data.npz, .p files, or one sub-folder of images per class",
    )
