"""Convert the trained Keras model to ONNX with tf2onnx and prove the two agree."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectorai import onnx_metadata
from vectorai.calibration import apply_temperature, expected_calibration_error, fit_temperature
from vectorai.drift import summarise
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
    #: Calibration (``vectorai.calibration``): the temperature fitted on the validation split, and
    #: the expected calibration error on the check (test) images before and after it.
    temperature: float = 1.0
    ece_uncalibrated: float = 0.0
    ece: float = 0.0


@dataclass(frozen=True)
class HeldOut:
    """Preprocessed images the model did not train on, and their labels."""

    images: np.ndarray
    labels: np.ndarray


def export_onnx(
    keras_path: Path,
    onnx_path: Path,
    *,
    class_names: list[str],
    spec: PreprocessSpec,
    model_version: str,
    check: HeldOut,
    validation: HeldOut,
    tolerance: float = 1e-4,
) -> ParityReport:
    """Write ``onnx_path`` from ``keras_path`` with vectorai metadata, then check parity on
    ``check``'s images: same argmax everywhere and calibrated probabilities within ``tolerance``.
    Raises ExportParityError (and removes the file) when they disagree.

    The metadata holds a temperature fitted on ``validation`` and the model's reference outputs
    there (``vectorai.drift``); the ONNX file's own graph is Keras' unchanged, and inference
    applies the temperature, so parity compares Keras' output calibrated here with what
    ``OnnxClassifier`` gives from the file."""
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
    temperature, reference = calibrate(model.predict(validation.images, batch_size=256, verbose=0), validation)
    onnx_metadata.set_metadata(proto, {onnx_metadata.CLASS_NAMES: json.dumps(class_names),
                                       onnx_metadata.PREPROCESS: json.dumps(spec.to_dict()),
                                       onnx_metadata.MODEL_VERSION: model_version,
                                       onnx_metadata.TEMPERATURE: repr(temperature),
                                       onnx_metadata.REFERENCE: reference})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path.write_bytes(proto.SerializeToString())

    raw = model.predict(check.images, batch_size=256, verbose=0)
    expected = apply_temperature(raw, temperature)
    actual = OnnxClassifier(onnx_path).predict_proba(check.images)
    report = ParityReport(
        images=len(check.images),
        max_abs_diff=float(np.max(np.abs(expected - actual))) if len(check.images) else 0.0,
        argmax_mismatches=int(np.sum(expected.argmax(axis=1) != actual.argmax(axis=1))),
        temperature=temperature, ece_uncalibrated=expected_calibration_error(raw, check.labels),
        ece=expected_calibration_error(expected, check.labels),
    )
    if report.argmax_mismatches or report.max_abs_diff > tolerance:
        onnx_path.unlink(missing_ok=True)
        raise ExportParityError(onnx_path, f"ONNX disagrees with Keras on {report.images} images: "
                                f"{report.argmax_mismatches} different classes, max probability "
                                f"difference {report.max_abs_diff:.2e} (tolerance {tolerance:g})")
    return report


def calibrate(probabilities: np.ndarray, validation: HeldOut) -> tuple[float, str]:
    """The temperature fitted on the model's ``probabilities`` for ``validation``, and its
    calibrated outputs there summarised as the drift reference (JSON)."""
    temperature = fit_temperature(probabilities, validation.labels)
    return temperature, summarise(apply_temperature(probabilities, temperature), "validation split").to_json()


def log_onnx_to_mlflow(tracking_uri: str, run_id: str, paths: list[Path],
                       metrics: dict[str, float] | None = None) -> None:
    """Attach the exported files (and the export's ``metrics``: calibration) to the training
    run, so the run holds every artifact."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path="onnx")
        if metrics:
            mlflow.log_metrics(metrics)
