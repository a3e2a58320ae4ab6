"""Reviews back into training: the reviewed images with their corrected labels, as an ``.npz``
that ``SplitData --extra-train`` adds to the training split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vectorai.datasets import LabelledImages
from vectorai.db import Prediction, Review
from vectorai.errors import DatasetError
from vectorai.review.images import decode_stored
from vectorai.prepare import load_stream_sample
from vectorai.split import image_digests, load_images, save_images


@dataclass(frozen=True)
class ReviewDigest:
    """How many reviews there are and a hash of what they say: a name for their content."""

    count: int
    sha256: str

    @property
    def name(self) -> str:
        return f"reviewed-{self.count}-{self.sha256[:10]}"


def review_digest() -> ReviewDigest:
    """The digest of the review table: (source, message_id, label) of every row, in order. Who
    reviewed and when are left out, so re-confirming a label changes nothing."""
    digest = hashlib.sha256()
    count = 0
    rows = (Review.select(Review.source, Review.message_id, Review.label)
            .order_by(Review.source, Review.message_id).tuples().iterator())
    for source, message_id, label in rows:
        # Lengths first, so that no two different rows can run together into the same bytes.
        for part in (source, message_id, str(label)):
            data = part.encode("utf-8", "surrogateescape")
            digest.update(len(data).to_bytes(4, "big") + data)
        count += 1
    return ReviewDigest(count, digest.hexdigest())


def export_reviewed(path: Path, class_names: list[str]) -> int:
    """Write every reviewed image with its corrected label to ``path`` (``save_images`` format);
    returns how many. An image that no longer decodes is a DatasetError naming the message."""
    images, labels = [], []
    rows = (Prediction.select(Prediction.source, Prediction.message_id, Prediction.image, Prediction.content_type,
                              Review.label)
            .join(Review, on=((Review.source == Prediction.source) & (Review.message_id == Prediction.message_id)))
            .order_by(Prediction.source, Prediction.message_id).tuples().iterator())
    for source, message_id, payload, content_type, label in rows:
        if not 0 <= label < len(class_names):
            raise DatasetError(path, f"review of {source}/{message_id!r} says class {label}, but the model has "
                                     f"{len(class_names)} classes")
        image = decode_stored(bytes(payload), {"content-type": content_type})
        if image is None:
            raise DatasetError(path, f"the stored image of {source}/{message_id!r} does not decode")
        images.append(image)
        labels.append(label)
    same = len({(im.shape, im.dtype) for im in images}) == 1
    stacked: np.ndarray | list[np.ndarray] = np.stack(images) if same else images
    if not images:
        stacked = np.zeros((0, 1, 1), dtype=np.uint8)
    save_images(path, LabelledImages(stacked, np.asarray(labels, dtype=np.int64), list(class_names)))
    return len(labels)


def add_to_train(train_path: Path, extra_path: Path, held_out: Sequence[Path] = (), kept_path: Path | None = None) -> int:
    """Append the images of ``extra_path`` to the split's ``train_path`` (in place, atomically);
    returns how many were added. Their class names must be the dataset's. An extra image that is
    also in one of the ``held_out`` files (the split's validation, test and stream sample) is
    left out: training on it would score the model on what it learnt. ``kept_path``: where to
    write the images added, so that training can tell them from the rest."""
    # load_stream_sample: save_images' format (a ReviewedData export) and a plain x/y .npz alike.
    train, extra = load_images(train_path), load_stream_sample(extra_path)
    if (extra.labels < 0).any():
        raise DatasetError(extra_path, "every extra training image needs a label (y)")
    held = {digest for path in held_out if Path(path).is_file()
            for digest in image_digests(load_stream_sample(Path(path)).images)}
    if held:
        keep = [i for i, digest in enumerate(image_digests(extra.images)) if digest not in held]
        extra = extra.subset(keep)
    if not len(extra):
        return 0
    for label in np.unique(extra.labels).tolist():
        if not 0 <= label < len(train.class_names):
            raise DatasetError(extra_path, f"has class {label}; the dataset has {len(train.class_names)} classes")
        named = extra.class_names[label] if label < len(extra.class_names) else str(label)
        # A class no prediction named is called by its index in a review export.
        if named not in (train.class_names[label], str(label)):
            raise DatasetError(extra_path, f"calls class {label} {named!r}; the dataset calls it "
                                           f"{train.class_names[label]!r}")
    if (isinstance(train.images, np.ndarray) and isinstance(extra.images, np.ndarray)
            and train.images.shape[1:] == extra.images.shape[1:] and train.images.dtype == extra.images.dtype):
        images: np.ndarray | list[np.ndarray] = np.concatenate([train.images, extra.images])
    else:
        images = [*list(train.images), *list(extra.images)]
    # Shuffled in with a fixed seed, so training batches drawn in order mix both.
    order = np.random.default_rng(len(train) + len(extra)).permutation(len(train) + len(extra))
    labels = np.concatenate([train.labels, extra.labels])
    merged = LabelledImages(images, labels, list(train.class_names)).subset(order)
    if kept_path is not None:
        save_images(kept_path, LabelledImages(extra.images, extra.labels, list(train.class_names)))
    save_images(train_path, merged)
    return len(extra)
