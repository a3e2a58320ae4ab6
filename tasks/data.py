"""DownloadData and SplitData."""

from __future__ import annotations

from pathlib import Path

import luigi

from tasks.common import VectoraiTaskMixin, params_hash, write_json
from tasks.config import paths
from vectorai.split import SPLIT_RULE


class DownloadData(VectoraiTaskMixin, luigi.Task):
    """Download a public dataset (mnist, fashion-mnist, cifar10) into data/external/<name>/."""

    dataset = luigi.Parameter(default="mnist", description="mnist, fashion-mnist or cifar10")

    def output(self) -> luigi.LocalTarget:
        # A marker written after every file is verified: the folder alone may hold a partial
        # download waiting to be resumed.
        return luigi.LocalTarget(paths().data / "external" / self.dataset / "DOWNLOADED.json")

    def run(self) -> None:
        from vectorai.download import download_dataset

        folder = download_dataset(self.dataset, paths().data / "external")
        files = sorted(p.name for p in folder.iterdir() if p.suffix == ".sha256")
        write_json(self.output(), {"dataset": self.dataset, "verified": files})


class SplitData(VectoraiTaskMixin, luigi.Task):
    """Train/val/test split of a dataset, plus the stream sample: test and stream by content
    digest (the same for every seed), train/val seeded."""

    dataset = luigi.Parameter(config_path=dict(section="SplitData", name="dataset"),
        default="mnist-sample", description="Built-in (mnist-sample, digits), a folder "
                              "under data/external, or a path")
    seed = luigi.IntParameter(config_path=dict(section="SplitData", name="seed"),
        default=42, description="Seed of the train/validation draw and of training (the test "
                              "split and the stream sample are chosen by content, whatever the seed)")
    val_fraction = luigi.FloatParameter(config_path=dict(section="SplitData", name="val_fraction"),
        default=0.15, description="Share of each class for validation")
    test_fraction = luigi.FloatParameter(config_path=dict(section="SplitData", name="test_fraction"),
        default=0.15, description="Share of each class for the test split")
    stream_size = luigi.IntParameter(config_path=dict(section="SplitData", name="stream_size"),
        default=200, description="Images held out of the test split as the stream "
                                     "sample, when the dataset has no stream_sample.npz")
    split_rule = luigi.IntParameter(default=SPLIT_RULE, description="How vectorai.split chooses the split. "
        "Only the current rule can be made; it is a parameter so that it is part of every model's name and a "
        "model trained on an older rule's split is never reused")
    allow_legacy_pickle = luigi.BoolParameter(config_path=dict(section="SplitData", name="allow_legacy_pickle"),
        default=False, significant=False,
                                              description="Trust and load the old project's pickled .p datasets")

    extra_train = luigi.Parameter(config_path=dict(section="SplitData", name="extra_train"), default="",
        description="Images added to the training split only (never validation, test or a stream "
                    "sample): 'reviewed' (the review table's corrections, through ReviewedData) or an .npz; "
                    "their count and a hash of them are part of the name")

    def requires(self):
        if self.extra_train == "reviewed":
            from tasks.review import ReviewedData

            return ReviewedData()
        return []

    @property
    def extra_train_path(self) -> Path | None:
        if not self.extra_train:
            return None
        return Path(self.input().path) if self.extra_train == "reviewed" else Path(self.extra_train)

    @property
    def extra_train_name(self) -> str:
        """``-reviewed-N-HASH`` / ``-extra-N-HASH`` for the extra training images, '' without."""
        if not self.extra_train:
            return ""
        if self.extra_train == "reviewed":
            return "-" + Path(self.input().path).stem  # ReviewedData's name is its count and hash
        from tasks.review import extra_train_name

        return extra_train_name(Path(self.extra_train))

    @property
    def dataset_label(self) -> str:
        return Path(self.dataset).name.removesuffix(".npz") or "dataset"

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(paths().data / "processed" / self.dataset_label /
                                 f"{params_hash(self)}{self.extra_train_name}")

    def run(self) -> None:
        from vectorai.prepare import make_splits

        if self.split_rule != SPLIT_RULE:
            from vectorai.errors import ConfigError

            raise ConfigError("SplitData.split_rule", f"this code makes split rule {SPLIT_RULE}, not {self.split_rule}")
        external = paths().data / "external"
        with self.output().temporary_path() as tmp:
            make_splits(
                self.dataset, external, Path(tmp), val_fraction=self.val_fraction,
                test_fraction=self.test_fraction, seed=self.seed, stream_size=self.stream_size,
                allow_legacy_pickle=self.allow_legacy_pickle,
            )
            if self.extra_train_path is not None:
                from vectorai.prepare import EXTRA_TRAIN
                from vectorai.review.dataset import add_to_train

                add_to_train(Path(tmp) / "train.npz", self.extra_train_path,
                             held_out=[Path(tmp) / f"{name}.npz" for name in ("val", "test", "stream")],
                             kept_path=Path(tmp) / EXTRA_TRAIN)
