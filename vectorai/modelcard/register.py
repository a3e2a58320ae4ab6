"""Registering a model that this chain did not train, as a version like our own exports.

The card is bound to the graph first (a card that does not fit fails here, not in a later
PredictTask), then written into the ONNX file's metadata (``vectorai.card``): the registered
``model.onnx`` alone is then a complete model, the cache's SHA-256 covers its card, and
``@champion``, PromoteModel's evaluation, ``--model-uri`` and shadow scoring load it the way they
load ours.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vectorai.modelcard.card import META_CARD, model_file


def embed_card(path: Path, card: Mapping[str, Any], out: Path) -> Path:
    """A copy of ``path``'s ONNX graph at ``out`` with ``card`` in its metadata (any older card
    replaced); the graph itself is unchanged."""
    import onnx

    model = onnx.load(str(model_file(path)))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != META_CARD]
    del model.metadata_props[:]
    for key, value in kept + [(META_CARD, json.dumps(card, sort_keys=True))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


def model_digest(path: Path) -> str:
    """SHA-256 over the ONNX file and the card files beside it: what a registration is of."""
    from vectorai.modelcard.card import CARD_FILE, HF_CONFIG, HF_PREPROCESSOR, card_folder

    digest = hashlib.sha256()
    folder = card_folder(path)
    for file in [model_file(path)] + [folder / n for n in (HF_CONFIG, HF_PREPROCESSOR, CARD_FILE)]:
        if file.is_file():
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def register_foreign_model(path: Path, *, tracking_uri: str, experiment: str, name: str,
                           artifact_dir: Path | None = None, overrides: Mapping[str, Any] | None = None):
    """Register the model at ``path`` (an optimum folder, a model with ``vectorai.json``, or one
    of our exports) as a new version of ``name``, its card embedded, in a run of its own in
    ``experiment``. Returns the registry's ``ModelVersionRef``."""
    import mlflow

    from vectorai.inference import OnnxClassifier
    from vectorai.registry import _call, check_model_name, register_onnx_model
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
            _call(f"models:/{name}", tracking_uri, "cannot log the model card", lambda: (
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
