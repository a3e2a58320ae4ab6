"""ReviewedData: the review table's corrections as training images."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import luigi

from tasks.common import VectoraiTaskMixin
from tasks.config import database, paths


class ReviewedData(VectoraiTaskMixin, luigi.Task):
    """Export every reviewed image with its corrected label into data/reviewed/; the file is
    named by the reviews' count and hash, so new reviews make a new file (and a new model)."""

    @cached_property
    def digest(self):
        from vectorai.db import connect
        from vectorai.review.dataset import review_digest

        db = connect(database().resolved_url(), database().connect_timeout_s)
        try:
            return review_digest()
        finally:
            db.close()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(paths().data / "reviewed" / f"{self.digest.name}.npz")

    def run(self) -> None:
        from vectorai.db import connect
        from vectorai.errors import DatasetError
        from vectorai.review.dataset import export_reviewed, review_digest
        from vectorai.review.queries import read_facets

        db = connect(database().resolved_url(), database().connect_timeout_s)
        try:
            with db.atomic():
                if review_digest() != self.digest:
                    raise DatasetError(self.output().path, "the reviews changed since this run started; run it again")
                export_reviewed(Path(self.output().path), list(read_facets().classes.values()))
        finally:
            db.close()


def extra_train_name(path: Path) -> str:
    """``-extra-N-HASH`` for an .npz of extra training images: their count and the file's SHA-256."""
    from vectorai.prepare import load_stream_sample

    if not path.is_file():
        return "-extra-missing"  # run() then fails on the path with one line
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    return f"-extra-{len(load_stream_sample(path))}-{digest}"
