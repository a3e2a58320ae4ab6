"""Build and train the small Keras CNN, recording everything in MLflow.

TensorFlow is imported inside the functions: it takes seconds to load and the prediction path
must never pay for it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vectorai.datasets import LabelledImages
from vectorai.errors import ConfigError
from vectorai.preprocess import PreprocessSpec, preprocess_images


#: What the code trains for a given TrainConfig: the architecture, the augmentation and the
#: schedule. Bump it whenever a change here would train a different model from the same
#: settings; TrainModel puts it in the model's name, so an older model is never reused for it.
#: 1: two conv layers, 10 epochs of Adam at 1e-3. 2: three conv layers at the same inference
#: cost, augmentation, a cosine schedule, less dropout, 20 epochs.
RECIPE = 2


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained model."""

    epochs: int = 20
    batch_size: int = 128
    #: Adam's starting rate, decayed to zero along a cosine over the whole run.
    learning_rate: float = 2e-3
    seed: int = 42
    image_height: int = 28
    image_width: int = 28
    channels: int = 1
    #: Random affine augmentation of the training batches (never of validation or test): each
    #: image is rotated, shifted, scaled and sheared by amounts drawn uniformly up to these.
    #: All zero: none.
    max_rotation_degrees: float = 12.0
    #: As a fraction of the image side: 0.09 is 2.5 pixels at 28.
    max_shift: float = 0.09
    max_zoom: float = 0.1
    max_shear: float = 0.2
    dropout: float = 0.1
    #: How many training images each extra one (a reviewed correction, ``--extra-train``) counts
    #: as: it is repeated that many times in every epoch, each time augmented afresh. A few
    #: hundred corrections among thousands of images are otherwise too few to teach a new kind
    #: of image (benchmarks/README.md, "Learning from corrections").
    reviewed_weight: int = 10
    recipe: int = RECIPE

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


def build_model(spec: PreprocessSpec, num_classes: int, learning_rate: Any, dropout: float = 0.1) -> Any:
    """Three conv layers and a softmax head: small enough for CPUs, ~99% on MNIST.

    The third conv layer works at a quarter of the pixels, so it costs about what narrowing the
    second from 64 to 48 filters saves: the same inference cost as the two-layer model before it,
    with more depth. ``learning_rate``: a number, or a Keras schedule."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((spec.height, spec.width, spec.channels), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(48, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(48, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout),
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


def augment_images(images: Any, seed: Any, config: TrainConfig) -> Any:
    """A random affine transform of each image in a (N, H, W, C) float batch, drawn from the
    stateless ``seed`` (a pair of ints): the same seed always gives the same batch. Pixels
    moved in from outside the image are 0 (background)."""
    import tensorflow as tf

    count = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    draw = tf.random.stateless_uniform([count, 5], seed=seed, minval=-1.0, maxval=1.0)
    angle = draw[:, 0] * (config.max_rotation_degrees * math.pi / 180.0)
    shift_x, shift_y = draw[:, 1] * config.max_shift * width, draw[:, 2] * config.max_shift * height
    scale = 1.0 + draw[:, 3] * config.max_zoom
    shear = draw[:, 4] * config.max_shear
    # The transform maps each output pixel back to the input point it is read from:
    # input = A (output - centre - shift) + centre, A = rotation x shear / scale.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a00, a01, a10, a11 = cos, cos * shear - sin, sin, sin * shear + cos
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    offset_x = centre_x - a00 * (centre_x + shift_x) - a01 * (centre_y + shift_y)
    offset_y = centre_y - a10 * (centre_x + shift_x) - a11 * (centre_y + shift_y)
    zero = tf.zeros_like(cos)
    transforms = tf.stack([a00, a01, offset_x, a10, a11, offset_y, zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def training_batches(images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Any:
    """An endless tf.data stream of training batches: every epoch (``steps_per_epoch`` batches)
    is the whole set reshuffled, each batch augmented with its own seed (``config.seed``, the
    batch's number since the start), so a run is reproducible and no two epochs see the same
    images."""
    import tensorflow as tf

    batches = (tf.data.Dataset.from_tensor_slices((images, labels))
               .shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True)
               .batch(config.batch_size)
               .repeat())
    augmented = config.max_rotation_degrees or config.max_shift or config.max_zoom or config.max_shear
    if augmented:
        batches = batches.enumerate().map(
            lambda step, batch: (augment_images(batch[0], tf.stack([tf.constant(config.seed, tf.int64), step]),
                                                config), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    return batches.prefetch(tf.data.AUTOTUNE)


def oversample(count: int, extra: np.ndarray | None, weight: int) -> np.ndarray:
    """Indices into ``count`` training images holding each once and each image that ``extra``
    (a boolean mask, or None for none) marks ``weight`` times in all."""
    if weight < 1:
        raise ConfigError("TrainModel.reviewed_weight", f"must be at least 1, got {weight}")
    everyone = np.arange(count, dtype=np.int64)
    if extra is None or weight == 1:
        return everyone
    if len(extra) != count:
        raise ConfigError("extra training images", f"a mask of {len(extra)} for {count} training images")
    return np.concatenate([everyone, np.repeat(np.flatnonzero(extra), weight - 1)])


def steps_per_epoch(count: int, batch_size: int) -> int:
    return max(1, math.ceil(count / batch_size))


def fit_model(x_train: np.ndarray, y_train: np.ndarray, config: TrainConfig, num_classes: int, *,
              extra: np.ndarray | None = None, validation: tuple[np.ndarray, np.ndarray] | None = None,
              callbacks: Sequence[Any] = (), initial_weights: list[np.ndarray] | None = None,
              verbose: int = 2) -> tuple[Any, dict[str, list[float]]]:
    """Build the CNN and train it on preprocessed images (augmented batches, cosine schedule),
    each one that ``extra`` marks counting ``config.reviewed_weight`` times; from
    ``initial_weights`` (another model's, to fine-tune it) when given. Returns the model and
    Keras' history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(config.seed)
    epoch = oversample(len(x_train), extra, config.reviewed_weight)
    x_train, y_train = x_train[epoch], np.asarray(y_train)[epoch]
    steps = steps_per_epoch(len(x_train), config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.epochs * steps)
    model = build_model(config.spec, num_classes, schedule, config.dropout)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    fit = model.fit(training_batches(x_train, y_train, config), steps_per_epoch=steps, shuffle=False,  # it shuffles
                    validation_data=validation, epochs=config.epochs, verbose=verbose, callbacks=list(callbacks))
    return model, fit.history


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
    extra: np.ndarray | None = None,
) -> TrainResult:
    """Train on ``train``, validate on ``val`` each epoch, evaluate on ``test``; write
    ``model.keras``, ``metrics.json``, plots into ``out_dir`` and log all of it to MLflow.

    ``extra`` marks the training images added to the split (``--extra-train``): each counts
    ``config.reviewed_weight`` times. ``progress`` is called when the MLflow run has started and
    after each epoch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    from vectorai.tracking import mlflow_run

    spec = config.spec
    x_train, x_val, x_test = (preprocess_images(part.images, spec) for part in (train, val, test))
    num_classes = len(train.class_names)
    out_dir.mkdir(parents=True, exist_ok=True)

    with mlflow_run(tracking_uri, experiment, artifact_dir, run_name) as run:
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        if progress is not None:  # the run can be opened before the first epoch ends, minutes later
            progress(TrainProgress(0, config.epochs, {}, run_id, experiment_id))
        # What an epoch goes through: the time a retraining takes grows with it.
        per_epoch = len(oversample(len(x_train), extra, config.reviewed_weight))
        sizes = {"train_size": len(train), "extra_train_images": int(np.sum(extra)) if extra is not None else 0,
                 "images_per_epoch": per_epoch}
        mlflow.log_params({**asdict(config), **(extra_params or {}), **sizes,
                           "num_classes": num_classes, "val_size": len(val), "test_size": len(test)})
        model, history = fit_model(x_train, train.labels, config, num_classes, extra=extra,
                                   validation=(x_val, val.labels),
                                   callbacks=[_epoch_callback(config.epochs, progress, run_id, experiment_id)])
        result = _test_result(model, history, x_test, test.labels, num_classes)
        mlflow.log_metrics({"test_loss": result.metrics["test_loss"],
                            "test_accuracy": result.metrics["test_accuracy"]})
        summary = {"metrics": result.metrics, "history": result.history, "confusion_matrix": result.confusion,
                   "class_names": list(train.class_names), "preprocess": spec.to_dict(),
                   "config": asdict(config), **sizes, "mlflow_run_id": run_id,
                   "mlflow_experiment_id": experiment_id}
        _write_outputs(model, result, summary, out_dir)
    return result


def _epoch_callback(epochs: int, progress: Callable[[TrainProgress], None] | None, run_id: str,
                    experiment_id: str) -> Any:
    """A Keras callback that logs each epoch's metrics to the open MLflow run and reports progress."""
    import keras
    import mlflow

    def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
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
            progress(TrainProgress(epoch + 1, epochs, shown, run_id, experiment_id))

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _test_result(model: Any, fit_history: dict[str, list], x_test: np.ndarray, test_labels: np.ndarray,
                 num_classes: int) -> TrainResult:
    """The trained model on the test split, with the last epoch's training and validation figures."""
    test_loss, test_accuracy = model.evaluate(x_test, test_labels, batch_size=256, verbose=0)
    predicted = np.argmax(model.predict(x_test, batch_size=256, verbose=0), axis=1)
    metrics = {
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "val_loss": float(fit_history["val_loss"][-1]),
        "val_accuracy": float(fit_history["val_accuracy"][-1]),
        "train_loss": float(fit_history["loss"][-1]),
        "train_accuracy": float(fit_history["accuracy"][-1]),
    }
    history = {k: [float(v) for v in vals] for k, vals in fit_history.items()}
    return TrainResult(metrics=metrics, history=history,
                       confusion=confusion_matrix(test_labels, predicted, num_classes))


def _write_outputs(model: Any, result: TrainResult, summary: dict[str, Any], out_dir: Path) -> None:
    """``model.keras``, the two plots and ``metrics.json`` in ``out_dir``, each logged to the open run."""
    import mlflow

    model.save(out_dir / "model.keras")
    _plot_learning_curves(result.history, out_dir / "learning_curves.png")
    _plot_confusion(result.confusion, summary["class_names"], out_dir / "confusion_matrix.png")
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    for name in ("model.keras", "learning_curves.png", "confusion_matrix.png", "metrics.json"):
        mlflow.log_artifact(str(out_dir / name))


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
