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

from vectorai.modelcard import embed_card, model_digest, model_file
from vectorai.registry.client import call_mlflow, register_onnx_model
from vectorai.registry.names import ModelVersionRef, check_model_name


def register_foreign_model(path: Path, *, tracking_uri: str, experiment: str, name: str,
                           artifact_dir: Path | None = None,
                           overrides: Mapping[str, Any] | None = None) -> ModelVersionRef:
    """Register the model at ``path`` (an optimum folder, a model with ``vectorai.json``, or one
    of our exports) as a new version of ``name``, its card embedded, in a run of its own in
    ``experiment``. Returns the registry's ``ModelVersionRef``."""
    import mlflow

    from vectorai.inference import OnnxClassifier
    from vectorai.tracking import mlflow_run

    check_model_name(name)
    path = Path(path)
    classifier = OnnxClassifier(path, threads=1, card_overrides=dict(overrides or {}))
    card = classifier.card.to_dict() if classifier.card is not None else None
    height, width, channels = classifier.spec.height, classifier.spec.width, classifier.spec.channels
    digest = model_digest(path)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = embed_card(path, card, Path(tmp) / "model.onnx") if card is not None else model_file(path)
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
