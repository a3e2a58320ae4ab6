"""TrainModel, ExportOnnx and PromoteModel."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import luigi
from luigi.util import requires

from tasks.common import VectoraiTaskMixin, name_part, params_hash, read_json, registry_resources, write_json
from tasks.config import mlflow, paths, registry
from tasks.data import SplitData
from tasks.live import LiveStatus
from vectorai.training import RECIPE, TrainConfig

#: TrainConfig's: the one default, documented there.
DEFAULT_REVIEWED_WEIGHT = TrainConfig.reviewed_weight

if TYPE_CHECKING:
    from vectorai.datasets import LabelledImages
    from vectorai.registry import ChooseImages, ModelVersionRef

log = logging.getLogger("luigi-interface")

#: How the images compared on are chosen from an --eval-file (the decision's compared_on.chosen).
EVAL_FILE_CHOICE = "--eval-file, less the images either version trained on"


@requires(SplitData)
class TrainModel(VectoraiTaskMixin, luigi.Task):
    """Train the CNN on the split; log params, per-epoch metrics and artifacts to MLflow."""

    epochs = luigi.IntParameter(config_path=dict(section="TrainModel", name="epochs"),
        default=20, description="Training epochs")
    batch_size = luigi.IntParameter(config_path=dict(section="TrainModel", name="batch_size"),
        default=128, description="Training batch size")
    image_size = luigi.IntParameter(config_path=dict(section="TrainModel", name="image_size"),
        default=28, description="Images are resized to image_size x image_size")
    channels = luigi.IntParameter(config_path=dict(section="TrainModel", name="channels"),
        default=1, description="1 (greyscale) or 3 (colour) model input")
    learning_rate = luigi.FloatParameter(config_path=dict(section="TrainModel", name="learning_rate"),
        default=2e-3, description="Adam's starting learning rate (cosine decay to zero)")
    reviewed_weight = luigi.IntParameter(config_path=dict(section="TrainModel", name="reviewed_weight"),
        default=DEFAULT_REVIEWED_WEIGHT, description="How many training images each --extra-train image (a reviewed "
        "correction) counts as: it is repeated that many times per epoch, each time augmented afresh; 1: as any other")
    model_recipe = luigi.IntParameter(default=RECIPE, description="What vectorai.training trains: architecture, "
        "augmentation, schedule. Only the current one can be trained; it is a parameter so that it is part of "
        "the model's name and a new recipe never reuses a model trained by an older one")

    @property
    def model_name(self) -> str:
        # The extra training images' count and hash: new reviews retrain, nothing else does. Their
        # weight too (models trained on them before it existed counted them once).
        extra = self.requires().extra_train_name
        weight = f"-w{self.reviewed_weight}" if extra else ""
        return f"{self.requires().dataset_label}-{params_hash(self)}{extra}{weight}"

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(paths().models / self.model_name / "keras")

    def run(self) -> None:
        from vectorai.prepare import extra_train_mask, load_splits
        from vectorai.tracking import describe_run, run_page_url
        from vectorai.training import TrainConfig, TrainProgress, train_model

        if self.model_recipe != RECIPE:
            from vectorai.errors import ConfigError

            raise ConfigError("TrainModel.model_recipe", f"this code trains recipe {RECIPE}, not {self.model_recipe}")
        splits = load_splits(Path(self.input().path))
        config = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                             seed=self.seed, image_height=self.image_size, image_width=self.image_size,
                             channels=self.channels, reviewed_weight=self.reviewed_weight)
        tracking_uri = mlflow().resolved_uri()

        with LiveStatus(self) as live, self.output().temporary_path() as tmp:
            def show(progress: TrainProgress) -> None:
                run = describe_run(tracking_uri, progress.experiment_id, progress.run_id)
                live.update(f"{progress.describe()}\n{run}", progress.percent,
                            run_page_url(tracking_uri, progress.experiment_id, progress.run_id))

            train_model(
                splits.train, splits.val, splits.test, config, Path(tmp),
                tracking_uri=tracking_uri, experiment=mlflow().experiment,
                artifact_dir=mlflow().artifact_dir, run_name=self.model_name,
                extra_params={"dataset": self.dataset, "val_fraction": self.val_fraction,
                              "test_fraction": self.test_fraction, "model_name": self.model_name},
                progress=show, extra=extra_train_mask(Path(self.input().path), splits.train.images),
            )


@requires(TrainModel)
class ExportOnnx(VectoraiTaskMixin, luigi.Task):
    """Export to ONNX with tf2onnx, check it against Keras, store class names and preprocessing;
    log it as an MLflow model in the training run and register it as a new version."""

    parity_tolerance = luigi.FloatParameter(config_path=dict(section="ExportOnnx", name="parity_tolerance"),
        default=1e-4, significant=False,
                                            description="Largest allowed probability difference ONNX vs Keras")
    registered_model = luigi.Parameter(default="", significant=False,
                                       description="Registered model the export becomes a version of; empty: "
                                       "[registry] model_name (vectorai-<dataset>)")

    @property
    def registered_name(self) -> str:
        return self.registered_model or registry().name_for(self.clone(SplitData).dataset_label)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(Path(self.input().path).parent / "onnx")

    def run(self) -> None:
        from vectorai.tracking import describe_run, run_page_url

        train_dir = Path(self.input().path)
        summary = read_json(train_dir / "metrics.json")
        tracking_uri = mlflow().resolved_uri()
        with LiveStatus(self) as live:
            # The ONNX model is logged to TrainModel's run: that is the page to link. A model
            # trained before metrics.json named the experiment gets the run id alone.
            run_id, experiment_id = summary["mlflow_run_id"], summary.get("mlflow_experiment_id")
            if experiment_id:
                live.update(f"exporting to ONNX\n{describe_run(tracking_uri, experiment_id, run_id)}",
                            tracking_url=run_page_url(tracking_uri, experiment_id, run_id))
            else:
                live.update(f"exporting to ONNX\nMLflow run {run_id}")
            self._export(train_dir, summary, tracking_uri)

    def _export(self, train_dir: Path, summary: dict, tracking_uri: str) -> None:
        from vectorai.export import HeldOut, export_onnx, log_onnx_to_mlflow
        from vectorai.preprocess import PreprocessSpec, preprocess_images
        from vectorai.prepare import load_splits
        from vectorai.tracking import mlflow_credentials

        spec = PreprocessSpec.from_dict(summary["preprocess"])
        splits = load_splits(Path(self.requires().input().path))
        model_name = train_dir.parent.name
        with self.output().temporary_path() as tmp:
            out = Path(tmp)
            # Calibrated and summarised on the validation split (never trained on); the ECE and
            # parity on the test split.
            parity = export_onnx(
                train_dir / "model.keras", out / "model.onnx", class_names=summary["class_names"], spec=spec,
                model_version=model_name, tolerance=self.parity_tolerance,
                check=HeldOut(preprocess_images(splits.test.images, spec), splits.test.labels),
                validation=HeldOut(preprocess_images(splits.val.images, spec), splits.val.labels),
            )
            parity_figures = {"images": parity.images, "max_abs_diff": parity.max_abs_diff,
                              "argmax_mismatches": parity.argmax_mismatches}
            calibration = {"temperature": parity.temperature, "test_ece": parity.ece,
                           "test_ece_uncalibrated": parity.ece_uncalibrated}
            version = self.register(out / "model.onnx", parity_figures)
            write_json(luigi.LocalTarget(out / "model.json"), {
                "model_version": model_name, "class_names": summary["class_names"],
                "preprocess": spec.to_dict(), "input": "image", "output": "probabilities",
                "parity": parity_figures, "calibration": calibration,
                "test_accuracy": summary["metrics"]["test_accuracy"], "mlflow_run_id": summary["mlflow_run_id"],
                "registered_model": {"name": version.name, "version": version.version},
            })
            # MLflow gets the URI without its password (lent to MLflow's own variables for the
            # call only), so nothing MLflow prints or raises here can show it.
            with mlflow_credentials(tracking_uri) as uri:
                log_onnx_to_mlflow(uri, summary["mlflow_run_id"], [out / "model.onnx", out / "model.json"],
                                   metrics=calibration)

    def register(self, onnx_path: Path, parity: dict[str, float]) -> ModelVersionRef:
        """Log ``onnx_path`` to the training run as an MLflow model and register it as a new
        version of ``registered_name``, tagged with the test accuracy, the parity figures, the
        parameter hash, the dataset and its split (the test split's digest, what it trained on); a
        version already registered from the training run is used instead (a retry registers
        nothing new). (PromoteModel calls it too, for an export made before exports were
        registered, or under another name.)"""
        from vectorai.prepare import load_splits, split_tags, trained_on_digests
        from vectorai.preprocess import PreprocessSpec, preprocess_images
        from vectorai.registry import check_model_name, record_training_set, register_onnx_model

        train_dir, split_dir = Path(self.input().path), Path(self.requires().input().path)
        summary = read_json(train_dir / "metrics.json")
        spec = PreprocessSpec.from_dict(summary["preprocess"])
        example = preprocess_images(load_splits(split_dir).test.images[:1], spec)
        # What it trained on, so that PromoteModel compares it with another version only on
        # images neither learnt from.
        split = {**split_tags(split_dir), **record_training_set(
            trained_on_digests(split_dir), tracking_uri=mlflow().resolved_uri(), run_id=summary["mlflow_run_id"])}
        return register_onnx_model(
            onnx_path, tracking_uri=mlflow().resolved_uri(), run_id=summary["mlflow_run_id"],
            name=check_model_name(self.registered_name), input_example=example,
            tags={"test_accuracy": summary["metrics"]["test_accuracy"], "parity_images": parity["images"],
                  "parity_max_abs_diff": parity["max_abs_diff"], "parity_argmax_mismatches": parity["argmax_mismatches"],
                  # export_onnx raises on a failed check: an export that exists passed it.
                  "parity_passed": "true", "parity_tolerance": self.parity_tolerance,
                  "params_hash": params_hash(self.requires()), "dataset": self.dataset,
                  "model_name": train_dir.parent.name, **split},
        )


@requires(ExportOnnx)
class PromoteModel(VectoraiTaskMixin, luigi.Task):
    """Evaluate the new version and the current champion on the same labelled images, none of
    which either trained on; move the ``champion`` alias to the new one only when it is at least
    as good (plus min_improvement).

    The target is the decision, also logged to the training run. A refusal is a success: the
    chain goes on and PredictTask scores with the champion it had."""

    eval_file = luigi.Parameter(config_path=dict(section="PromoteModel", name="eval_file"), default="",
                                significant=False, description="An .npz (x, y) to compare models on, kept fixed "
                                "across retrains; empty: the split's test set")
    min_improvement = luigi.FloatParameter(config_path=dict(section="PromoteModel", name="min_improvement"),
                                           default=0.0, significant=False, description="Accuracy (0-1) the new "
                                           "version must gain over the champion to replace it")

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return registry_resources(self.requires().registered_name)

    def output(self) -> luigi.LocalTarget:
        # Not part of the model's identity, but of the decision's: another registered model, eval
        # file, threshold or tracking store is another decision (a decision made in one store
        # must not stand for another).
        key = json.dumps([self.requires().registered_name, self.eval_file, self.min_improvement,
                          mlflow().store_identity()])
        name = f"{name_part(self.requires().registered_name)}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"
        return luigi.LocalTarget(Path(self.input().path).parent / "promotion" / name)

    def run(self) -> None:
        from vectorai.prepare import load_splits, load_stream_sample
        from vectorai.registry import check_export, log_decision, promote_version

        onnx_dir = Path(self.input().path)
        exported = read_json(onnx_dir / "model.json")
        name = self.requires().registered_name
        version = (exported.get("registered_model") or {}).get("version")
        if (exported.get("registered_model") or {}).get("name") != name:
            # Exported before exports were registered, or registered under another name.
            version = self.requires().register(onnx_dir / "model.onnx", exported["parity"]).version
        tracking_uri = mlflow().resolved_uri()
        # model.json names a version, not a store: make sure this store's version is this export.
        check_export(name, version, exported["mlflow_run_id"], tracking_uri)
        if self.eval_file:
            data, eval_set = load_stream_sample(Path(self.eval_file)), self.eval_file
            chosen = EVAL_FILE_CHOICE
        else:
            split_dir = Path(self.clone(SplitData).output().path)
            data, eval_set = load_splits(split_dir).test, f"test split {split_dir}"
            chosen = (f"the test split (each image whose content digest falls under test_fraction {self.test_fraction}),"
                      " less the images either version trained on")
        if (data.labels < 0).any():
            from vectorai.errors import DatasetError

            raise DatasetError(eval_set, "every image needs a label (y) to compare models")
        with LiveStatus(self) as live:
            record = promote_version(name, version, tracking_uri=tracking_uri, cache_dir=registry().cache,
                                     choose=unseen_images(self, live, name, version, data, tracking_uri=tracking_uri,
                                                          eval_set=eval_set),
                                     min_improvement=self.min_improvement, eval_set=eval_set)
            record["compared_on"] = {"source": eval_set, "chosen": chosen, **record.pop("compared")}
            live.update(f"{record['outcome']}: {record['reason']}", 100)
        log_decision(record, tracking_uri=tracking_uri, run_id=exported["mlflow_run_id"],
                     artifact_file=f"promotion/{Path(self.output().path).name}")
        write_json(self.output(), record)


def unseen_images(task: luigi.Task, live: LiveStatus, name: str, version: str, data: LabelledImages, *,
                  tracking_uri: str, eval_set: str) -> ChooseImages:
    """What promote_version compares version ``version`` of ``name`` with a champion on: ``data``
    less the images either trained on (chosen again for a champion that another promotion moved
    in meanwhile); a version that recorded no training set is named in a warning."""
    from vectorai.registry import unseen_by_either

    def choose(champion: str | None):
        kept, compared = unseen_by_either(name, version, data, tracking_uri=tracking_uri, eval_set=eval_set,
                                          champion=champion)
        for label in compared["training_set_unknown"]:
            log.warning("%s: %s has no record of what it trained on (a model trained elsewhere, or registered by an "
                        "older vectorai); it may have trained on some of the images compared on", task.task_id, label)
        live.update(f"comparing {name}/{version} with {name}/{champion} on {len(kept.labels):,} images")
        return kept.images, kept.labels, compared

    return choose
