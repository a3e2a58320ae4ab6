"""Build and train the small Keras CNN, recording everything in MLflow.

TensorFlow is imported inside the functions: it takes seconds to load and the prediction path
must never pay for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vectorai.datasets import LabelledImages
from vectorai.preprocess import PreprocessSpec, preprocess_images


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained model."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 42
    image_height: int = 28
    image_width: int = 28
    channels: int = 1

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(self.image_height, self.image_width, self.channels)


@dataclass(frozen=True)
class TrainProgress:
    """Where training stands: sent once when the MLflow run has started (``epoch`` 0, no
    metrics yet) and after every epoch."""

    epoch: int
    epochs: int
    #: The epoch's ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` (empty at epoch 0).
    metrics: dict[str, float]
    run_id: str
    experiment_id: str

    @property
    def percent(self) -> float:
        return 100.0 * self.epoch / self.epochs if self.epochs else 0.0

    def describe(self) -> str:
        """``epoch 3/10: loss 0.1234, accuracy 0.9650, val_loss 0.0800, val_accuracy 0.9812``."""
        if not self.epoch:
            return f"epoch 0/{self.epochs}: training"
        shown = ", ".join(f"{name} {self.metrics[name]:.4f}" for name in _SHOWN_METRICS if name in self.metrics)
        return f"epoch {self.epoch}/{self.epochs}: {shown}"


_SHOWN_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, float]
    history: dict[str, list[float]]
    confusion: list[list[int]]


def build_model(spec: PreprocessSpec, num_classes: int, learning_rate: float) -> Any:
    """Two conv blocks and a softmax head: small enough for CPUs, ~99% on MNIST."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((spec.height, spec.width, spec.channels), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name="vectorai_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train_model(
    train: LabelledImages,
    val: LabelledImages,
    test: LabelledImages,
    config: TrainConfig,
    out_dir: Path,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_dir: Path | None,
    run_name: str,
    extra_params: dict[str, Any] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train on ``train``, validate on ``val`` each epoch, evaluate on ``test``; write
    ``model.keras``, ``metrics.json``, plots into ``out_dir`` and log all of it to MLflow.

    ``progress`` is called when the MLflow run has started and after each epoch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import mlflow

    from vectorai.tracking import mlflow_run

    keras.utils.set_random_seed(config.seed)
    spec = config.spec
    x_train, x_val, x_test = (preprocess_images(part.images, spec) for part in (train, val, test))
    num_classes = len(train.class_names)
    model = build_model(spec, num_classes, config.learning_rate)
    out_dir.mkdir(parents=True, exist_ok=True)

    class _LogEpoch(keras.callbacks.Callback):
        def __init__(self, run_id: str, experiment_id: str) -> None:
            super().__init__()
            self._run_id, self._experiment_id = run_id, experiment_id

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            mlflow.log_metrics(
                {
                    "train_loss": float(logs["loss"]),
                    "train_accuracy": float(logs["accuracy"]),
                    "val_loss": float(logs["val_loss"]),
                    "val_accuracy": float(logs["val_accuracy"]),
                },
                step=epoch + 1,
            )
            if progress is not None:
                shown = {name: float(logs[name]) for name in _SHOWN_METRICS if name in logs}
                progress(TrainProgress(epoch + 1, config.epochs, shown, self._run_id, self._experiment_id))

    with mlflow_run(tracking_uri, experiment, artifact_dir, run_name) as run:
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        if progress is not None:  # the run can be opened before the first epoch ends, minutes later
            progress(TrainProgress(0, config.epochs, {}, run_id, experiment_id))
        mlflow.log_params({**asdict(config), **(extra_params or {}),
                           "num_classes": num_classes, "train_size": len(train),
                           "val_size": len(val), "test_size": len(test)})
        fit = model.fit(
            x_train, train.labels, validation_data=(x_val, val.labels),
            epochs=config.epochs, batch_size=config.batch_size, shuffle=True, verbose=2,
            callbacks=[_LogEpoch(run_id, experiment_id)],
        )
        test_loss, test_accuracy = model.evaluate(x_test, test.labels, batch_size=256, verbose=0)
        predicted = np.argmax(model.predict(x_test, batch_size=256, verbose=0), axis=1)
        confusion = confusion_matrix(test.labels, predicted, num_classes)
        metrics = {
            "test_loss": float(test_loss),
            "test_accuracy": float(test_accuracy),
            "val_loss": float(fit.history["val_loss"][-1]),
            "val_accuracy": float(fit.history["val_accuracy"][-1]),
            "train_loss": float(fit.history["loss"][-1]),
            "train_accuracy": float(fit.history["accuracy"][-1]),
        }
        mlflow.log_metrics({"test_loss": metrics["test_loss"], "test_accuracy": metrics["test_accuracy"]})
        history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

        model.save(out_dir / "model.keras")
        _plot_learning_curves(history, out_dir / "learning_curves.png")
        _plot_confusion(confusion, train.class_names, out_dir / "confusion_matrix.png")
        summary = {"metrics": metrics, "history": history, "confusion_matrix": confusion,
                   "class_names": list(train.class_names), "preprocess": spec.to_dict(),
                   "config": asdict(config), "mlflow_run_id": run_id,
                   "mlflow_experiment_id": experiment_id}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        for name in ("model.keras", "learning_curves.png", "confusion_matrix.png", "metrics.json"):
            mlflow.log_artifact(str(out_dir / name))
    return TrainResult(metrics=metrics, history=history, confusion=confusion)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[list[int]]:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix.tolist()


def _plot_learning_curves(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    ax_loss.plot(epochs, history["loss"], label="train")
    ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_loss.set(title="Loss", xlabel="epoch")
    ax_acc.plot(epochs, history["accuracy"], label="train")
    ax_acc.plot(epochs, history["val_accuracy"], label="validation")
    ax_acc.set(title="Accuracy", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xlabel="predicted", ylabel="true", title="Confusion matrix (test split)")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
