"""Registering a model that this chain did not train, as a version like our own exports.

The card is bound to the graph first (a card that does not fit fails here, not in a later
PredictTask), then embedded in the ONNX file (``vectorai.modelcard.embed_card``): ``@champion``,
PromoteModel's evaluation, ``--model-uri`` and shadow scoring then load it the way they load ours.
This sits above both the card and inference, which know nothing of the registry.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vectorai import onnx_metadata
from vectorai.datasets import LabelledImages
from vectorai.drift import OutputSummary, summarise
from vectorai.modelcard import embed_card, model_digest, model_file
from vectorai.registry.client import call_mlflow, register_onnx_model
from vectorai.registry.names import ModelVersionRef, check_model_name


def register_foreign_model(path: Path, *, tracking_uri: str, experiment: str, name: str,
                           artifact_dir: Path | None = None, overrides: Mapping[str, Any] | None = None,
                           reference_images: LabelledImages | None = None,
                           reference_source: str = "eval file") -> ModelVersionRef:
    """Register the model at ``path`` (an optimum folder, a model with ``vectorai.json``, or one
    of our exports) as a new version of ``name``, its card embedded, in a run of its own in
    ``experiment``. With ``reference_images`` (an eval file the model did not train on), its
    outputs there are embedded too, as the reference PredictTask's drift test compares streams
    with (``vectorai.drift``). Returns the registry's ``ModelVersionRef``."""
    import mlflow

    from vectorai.inference import OnnxClassifier
    from vectorai.tracking import mlflow_run

    check_model_name(name)
    path = Path(path)
    classifier = OnnxClassifier(path, threads=1, card_overrides=dict(overrides or {}))
    card = classifier.card.to_dict() if classifier.card is not None else None
    height, width, channels = classifier.spec.height, classifier.spec.width, classifier.spec.channels
    digest = model_digest(path)
    extra = {}
    if reference_images is not None:
        extra[onnx_metadata.REFERENCE] = reference_outputs(classifier, reference_images, reference_source).to_json()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = (embed_card(path, card, Path(tmp) / "model.onnx", extra) if card is not None or extra
                     else model_file(path))
        with mlflow_run(tracking_uri, experiment, artifact_dir, f"register-{name}") as run:
            call_mlflow(f"models:/{name}", tracking_uri, "cannot log the model card", lambda: (
                mlflow.log_params({"source": str(path.resolve())[:500], "source_sha256": digest}),
                mlflow.log_dict(card or {"vectorai": "own export: class names and preprocessing in its metadata"},
                                "model_card.json")))
            run_id = run.info.run_id
        example = classifier.preprocess([np.zeros((height, width, channels), np.uint8)])
        return register_onnx_model(
            onnx_path, tracking_uri=tracking_uri, run_id=run_id, name=name, input_example=example,
            tags={"foreign": "true", "source_sha256": digest, "card": classifier.card.describe()
                  if classifier.card is not None else "vectorai metadata",
                  "classes": len(classifier.class_names)})


def reference_outputs(classifier, images: LabelledImages, source: str, batch_size: int = 256) -> OutputSummary:
    """``classifier``'s (calibrated) outputs on ``images``, summarised as a drift reference."""
    outputs = [classifier.predict_proba(classifier.preprocess(images.images[start:start + batch_size]))
               for start in range(0, len(images.images), batch_size)]
    probabilities = np.concatenate(outputs) if outputs else np.zeros((0, len(classifier.class_names)), np.float32)
    return summarise(probabilities, source)
