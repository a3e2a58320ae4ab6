"""Convert the trained Keras model to ONNX with tf2onnx and prove the two agree."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectorai import onnx_metadata
from vectorai.errors import ExportParityError, ModelError
from vectorai.inference import OnnxClassifier
from vectorai.preprocess import PreprocessSpec

#: ONNX opset: new enough for every op the CNN uses, old enough for any current onnxruntime.
OPSET = 17


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff: float
    argmax_mismatches: int


def export_onnx(
    keras_path: Path,
    onnx_path: Path,
    *,
    class_names: list[str],
    spec: PreprocessSpec,
    model_version: str,
    check_images: np.ndarray,
    tolerance: float = 1e-4,
) -> ParityReport:
    """Write ``onnx_path`` from ``keras_path`` with vectorai metadata, then check parity on
    ``check_images`` (preprocessed): same argmax everywhere and probabilities within
    ``tolerance``. Raises ExportParityError (and removes the file) when they disagree."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf2onnx

    try:
        model = keras.models.load_model(keras_path)
    except Exception as err:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise ModelError(keras_path, f"cannot load Keras model: {err}") from None
    signature = (tf.TensorSpec((None, spec.height, spec.width, spec.channels), tf.float32, name="image"),)

    @tf.function(input_signature=signature)
    def serve(image):
        return {"probabilities": model(image, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    onnx_metadata.set_metadata(proto, {onnx_metadata.CLASS_NAMES: json.dumps(class_names),
                                       onnx_metadata.PREPROCESS: json.dumps(spec.to_dict()),
                                       onnx_metadata.MODEL_VERSION: model_version})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path.write_bytes(proto.SerializeToString())

    expected = model.predict(check_images, batch_size=256, verbose=0)
    actual = OnnxClassifier(onnx_path).predict_proba(check_images)
    report = ParityReport(
        images=len(check_images),
        max_abs_diff=float(np.max(np.abs(expected - actual))) if len(check_images) else 0.0,
        argmax_mismatches=int(np.sum(expected.argmax(axis=1) != actual.argmax(axis=1))),
    )
    if report.argmax_mismatches or report.max_abs_diff > tolerance:
        onnx_path.unlink(missing_ok=True)
        raise ExportParityError(onnx_path, f"ONNX disagrees with Keras on {report.images} images: "
                                f"{report.argmax_mismatches} different classes, max probability "
                                f"difference {report.max_abs_diff:.2e} (tolerance {tolerance:g})")
    return report


def log_onnx_to_mlflow(tracking_uri: str, run_id: str, paths: list[Path]) -> None:
    """Attach the exported files to the training run, so the run holds every artifact."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="onnx")
