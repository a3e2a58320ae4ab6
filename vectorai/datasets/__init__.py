"""Load labelled image datasets from the formats people actually have, into one in-memory shape.

Supported: MNIST / Fashion-MNIST IDX files (``idx``), the CIFAR-10 python archive, only once the
downloader has verified its checksum (``cifar``), folders of class sub-folders of PNG/JPEG images
(``folders``), ``.npz`` files (``npz``), two offline built-ins, ``mnist-sample`` and ``digits``
(``builtin``) and, only on request, the old project's ``.p`` pickles (``legacy``). ``load``
picks the loader from what is on disk, and ``labelled`` holds the shape they all return and the
checks it passes. Every problem is a :class:`DatasetError` naming the file and what is wrong.
"""

from vectorai.datasets.builtin import BUILTIN_DATASETS
from vectorai.datasets.cifar import CIFAR10_ARCHIVE, load_cifar10
from vectorai.datasets.folders import IMAGE_SUFFIXES, load_class_folders, read_image_file
from vectorai.datasets.idx import FASHION_MNIST_CLASSES, load_idx, read_idx
from vectorai.datasets.labelled import LabelledImages
from vectorai.datasets.legacy import LEGACY_PICKLE_SUFFIXES, load_legacy_pickle
from vectorai.datasets.load import DOWNLOADABLE_DATASETS, STREAM_SAMPLE_FILE, load_dataset
from vectorai.datasets.npz import load_npz, read_npz

__all__ = [
    "BUILTIN_DATASETS", "CIFAR10_ARCHIVE", "DOWNLOADABLE_DATASETS", "FASHION_MNIST_CLASSES",
    "IMAGE_SUFFIXES", "LEGACY_PICKLE_SUFFIXES", "STREAM_SAMPLE_FILE", "LabelledImages",
    "load_cifar10", "load_class_folders", "load_dataset", "load_idx", "load_legacy_pickle",
    "load_npz", "read_idx", "read_image_file", "read_npz",
]
