"""Models this chain did not train, served by PredictTask from a real stream with nothing but
``--model-path`` (the configuration's image_size and channels stay at their 28x28x1 defaults),
and registered, promoted and shadowed like our own.

Every check compares with onnxruntime run on the reference preprocessing: transformers' image
processors given the same preprocessor keys, on the same decoded pixels."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import new_project, pg_rows
from tests.foreign_models import COLOURS, VIT_PREPROCESSOR, colour_graph, colour_images, optimum_folder
from vectorai.streaming import publish_images
from vectorai.transports import open_transport

logging.getLogger("transformers").setLevel(logging.ERROR)

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def reference_input(preprocessor: dict, images, *, channels: int = 3, channel_order: str = "RGB",
                    layout: str = "NCHW") -> np.ndarray:
    """transformers' ViT image processor (resize, rescale, normalise) on each image, arranged as
    the model takes it."""
    from transformers import ViTImageProcessorPil

    config = {**preprocessor, "do_convert_rgb": channels == 3}
    processor = ViTImageProcessorPil(**config)
    batch = []
    for image in images:
        image = image[:, :, None] if image.ndim == 2 else image
        chw = processor(image, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]
        chw = chw[::-1] if channel_order == "BGR" else chw
        hwc = chw.transpose(1, 2, 0)
        batch.append({"NCHW": chw, "NHWC": hwc, "flat": hwc.reshape(-1)}[layout])
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def reference_probabilities(onnx_file, preprocessor, images, *, output=None, kind="probabilities", **arrange):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    [out] = session.run([output] if output else None,
                        {session.get_inputs()[0].name: reference_input(preprocessor, images, **arrange)})[:1]
    out = out.astype(np.float64)
    if kind == "logits":
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return out


@pytest.fixture
def home(tmp_path):
    """A project with no trained model at all."""
    return new_project(tmp_path / "home")


@pytest.fixture
def kafka_home(home, kafka_bootstrap, pg_database):
    home.use_kafka(kafka_bootstrap).use_postgres(pg_database)
    home.bootstrap = kafka_bootstrap
    return home


def send_to_kafka(project, images, labels) -> list[str]:
    cfg = project.config["stream"]
    with open_transport("kafka", bootstrap_servers=project.bootstrap, topic=cfg["topic"],
                        group=cfg["group"]) as transport:
        return publish_images(transport, images, labels, dataset="foreign", encoding="png", timeout_s=60)


def predict_from_kafka(project, model) -> tuple[dict[str, dict], dict]:
    project.luigi("PredictTask", "--require-stream", "false", "--model-path", str(model))
    [report] = [json.loads(p.read_text()) for p in (project.data / "reports").glob("*.json")]
    return {r["message_id"]: r for r in pg_rows(project.pg)}, report


def check_rows(rows, ids, probabilities, class_names, labels, min_accuracy, version):
    """The stored class names and confidences are the reference's; accuracy as trained."""
    assert sorted(rows) == sorted(ids)
    for i, ident in enumerate(ids):
        row, want = rows[ident], int(probabilities[i].argmax())
        assert row["predicted_name"] == class_names[want] and row["predicted_class"] == want, ident
        assert row["confidence"] == pytest.approx(probabilities[i, want], abs=1e-5), ident
        assert row["model_version"] == version and row["true_label"] == labels[i]
    accuracy = np.mean([rows[ident]["predicted_class"] == labels[i] for i, ident in enumerate(ids)])
    assert accuracy >= min_accuracy
    return accuracy


@pytest.mark.kafka
@pytest.mark.postgres
def test_an_optimum_folder_with_bgr_logits_classifies_a_kafka_stream_into_postgresql(kafka_home, tmp_path):
    folder = optimum_folder(tmp_path / "colour-vit", channel_order="BGR", card={"channel_order": "BGR"})
    images, labels = colour_images(60, seed=11)
    ids = send_to_kafka(kafka_home, images, labels)
    rows, report = predict_from_kafka(kafka_home, folder)
    probabilities = reference_probabilities(folder / "model.onnx", VIT_PREPROCESSOR, images, kind="logits",
                                            channel_order="BGR")
    check_rows(rows, ids, probabilities, COLOURS, labels, 0.95, "colour-vit")
    assert report["per_class"] == {c: int(n) for c, n in zip(COLOURS, np.bincount(probabilities.argmax(1), None, 3))
                                   if n}


@pytest.mark.kafka
@pytest.mark.postgres
def test_a_scikit_learn_classifier_exported_with_skl2onnx_on_flat_greyscale_input(kafka_home, tmp_path):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 8x8 greyscale images
    train, test = slice(0, 1500), slice(1500, 1620)
    clf = LogisticRegression(max_iter=2000).fit(pixels[train].reshape(1500, -1) / 255.0, digits.target[train])
    folder = tmp_path / "digits-sklearn"
    folder.mkdir()
    onnx_model = to_onnx(clf, (pixels[:1].reshape(1, -1) / 255.0).astype(np.float32),
                         options={id(clf): {"zipmap": False}})
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    preprocessor = {"size": {"height": 8, "width": 8}, "do_rescale": True, "rescale_factor": 1 / 255,
                    "do_normalize": False}
    (folder / "vectorai.json").write_text(json.dumps({
        "layout": "flat", "channel_order": "L", "output": "probabilities", "output_kind": "probabilities",
        "class_names_file": "classes.txt", "preprocessor": preprocessor}))

    images, labels = list(pixels[test]), digits.target[test]
    ids = send_to_kafka(kafka_home, images, labels)
    rows, _ = predict_from_kafka(kafka_home, folder)
    probabilities = reference_probabilities(folder / "model.onnx", preprocessor, images, output="probabilities",
                                            channels=1, layout="flat")
    accuracy = check_rows(rows, ids, probabilities, names, labels, 0.85, "digits-sklearn")
    # The ONNX model is the scikit-learn model: same accuracy as clf on the same images.
    assert accuracy == pytest.approx(clf.score(pixels[test].reshape(120, -1) / 255.0, labels), abs=1 / 120)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_a_keras_model_exported_with_tf2onnx_as_nchw_imagenet_224_rgb(kafka_home, tmp_path):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tf2onnx

    preprocessor = {"size": {"height": 224, "width": 224}, "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, **IMAGENET}
    # The weights are set, not trained: what matters here is the graph's form (Keras through tf2onnx,
    # NCHW at 224x224), and a model of the mean colour scores the colour images right. Filters 0-2
    # pass each channel (the bias keeps ImageNet-normalised pixels, >= -2.12, above ReLU's zero).
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3, 224, 224)), keras.layers.Permute((2, 3, 1)),
                              keras.layers.Conv2D(8, 1, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    kernel, bias = np.zeros((1, 1, 3, 8), np.float32), np.zeros(8, np.float32)
    kernel[0, 0, [0, 1, 2], [0, 1, 2]], bias[:3] = 1.0, 3.0
    dense = np.zeros((8, 3), np.float32)
    dense[[0, 1, 2], [0, 1, 2]] = 8.0
    model.set_weights([kernel, bias, dense, np.zeros(3, np.float32)])
    signature = (tf.TensorSpec((None, 3, 224, 224), tf.float32, name="pixel_values"),)

    @tf.function(input_signature=signature)
    def serve(pixel_values):
        return {"probabilities": model(pixel_values, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    folder = tmp_path / "colour-keras"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    (folder / "vectorai.json").write_text(json.dumps({
        "layout": "NCHW", "channel_order": "RGB", "output_kind": "probabilities", "class_names": COLOURS,
        "preprocessor": preprocessor}))

    images, labels = colour_images(40, seed=21)
    ids = send_to_kafka(kafka_home, images, labels)
    rows, _ = predict_from_kafka(kafka_home, folder)
    probabilities = reference_probabilities(folder / "model.onnx", preprocessor, images)
    check_rows(rows, ids, probabilities, COLOURS, labels, 0.9, "colour-keras")


# --- registered, promoted, shadowed -----------------------------------------------------------


def send_locally(project, images, labels) -> list[str]:
    with open_transport("local", root=project.data / "stream", topic="vectorai-images") as transport:
        return publish_images(transport, images, labels, dataset="colours", encoding="png", timeout_s=10)


def test_a_foreign_model_is_registered_promoted_against_an_eval_file_and_used_as_a_shadow(home, tmp_path):
    project = home
    good = optimum_folder(tmp_path / "good", channel_order="BGR", card={"channel_order": "BGR"})
    # Another form (vectorai.json, NHWC, 16x16, log-probabilities) that mistakes blue for green.
    worse = tmp_path / "worse"
    muddled = np.array([[8.0, 0, 0], [0, 8.0, 0], [0, 6.0, 4.0]], np.float32)
    colour_graph(worse / "model.onnx", layout="NHWC", output="log_probabilities", size=(16, 16), weights=muddled,
                 input_name="image", output_name="log_probs")
    worse_pre = {**VIT_PREPROCESSOR, "size": {"height": 16, "width": 16}}
    (worse / "vectorai.json").write_text(json.dumps({
        "layout": "NHWC", "output_kind": "log_probabilities", "class_names": COLOURS, "preprocessor": worse_pre}))
    eval_images, eval_labels = colour_images(90, seed=7, sizes=((32, 32),))
    np.savez(tmp_path / "eval.npz", x=np.stack(eval_images), y=eval_labels)

    # vectorai-register's main(), as `python -m` (the console script needs the package installed).
    registered = subprocess.run([sys.executable, "-m", "tasks.register", str(good), "--name", "colours"],
                                cwd=project.root, env=project.command_env(), capture_output=True, text=True,
                                timeout=300)
    assert registered.returncode == 0, registered.stderr[-3000:]
    out = registered.stdout
    assert json.loads(out[:out.index("}") + 1])["version"] == "1"
    project.luigi("PromoteRegisteredModel", "--model-path", str(good), "--registered-model", "colours",
                  "--eval-file", str(tmp_path / "eval.npz"))
    project.luigi("PromoteRegisteredModel", "--model-path", str(worse), "--registered-model", "colours",
                  "--eval-file", str(tmp_path / "eval.npz"))
    decisions = {d["candidate"]["version"]: d for d in
                 (json.loads(p.read_text()) for p in (project.root / "models" / "registered").rglob("promotion/*/*"))}
    good_probs = reference_probabilities(good / "model.onnx", VIT_PREPROCESSOR, eval_images, kind="logits",
                                         channel_order="BGR")
    worse_probs = reference_probabilities(worse / "model.onnx", worse_pre, eval_images, layout="NHWC",
                                          kind="logits")  # exp of log-softmax is the softmax of its input
    good_accuracy = float((good_probs.argmax(1) == eval_labels).mean())
    worse_accuracy = float((worse_probs.argmax(1) == eval_labels).mean())
    assert worse_accuracy < good_accuracy
    assert decisions["1"]["outcome"] == "promoted" and decisions["1"]["candidate"]["accuracy"] == good_accuracy
    assert decisions["2"]["outcome"] == "refused"
    assert decisions["2"]["candidate"]["accuracy"] == worse_accuracy
    assert decisions["2"]["champion"] == {"version": "1", "accuracy": good_accuracy}

    # Served from the registry alone (its own cached copy, card inside), the worse one as shadow.
    images, labels = colour_images(45, seed=9)
    ids = send_locally(project, images, labels)
    project.luigi("PredictTask", "--require-stream", "false", "--model-uri", "models:/colours@champion",
                  "--shadow-model-uri", "models:/colours/2")
    with sqlite3.connect(project.data / "predictions.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = {r["message_id"]: dict(r) for r in db.execute("SELECT * FROM prediction")}
        shadow = {r["message_id"]: dict(r) for r in db.execute("SELECT * FROM shadow_prediction")}
    mine = reference_probabilities(good / "model.onnx", VIT_PREPROCESSOR, images, kind="logits", channel_order="BGR")
    theirs = reference_probabilities(worse / "model.onnx", worse_pre, images, layout="NHWC", kind="logits")
    check_rows(rows, ids, mine, COLOURS, labels, 0.95, "colours/1")
    assert [shadow[i]["predicted_name"] for i in ids] == [COLOURS[c] for c in theirs.argmax(1)]
    assert all(shadow[i]["model_version"] == "colours/2" for i in ids)
    assert [shadow[i]["confidence"] for i in ids] == pytest.approx(theirs.max(1).tolist(), abs=1e-5)
    [report] = [json.loads(p.read_text()) for p in (project.data / "reports").glob("*.json")]
    assert report["shadow"]["agreement"] == pytest.approx(float((mine.argmax(1) == theirs.argmax(1)).mean()))
    assert report["shadow"]["accuracy"] == pytest.approx(float((theirs.argmax(1) == labels).mean()))


def test_a_card_that_does_not_fit_fails_in_one_line_before_anything_is_consumed(home, tmp_path):
    folder = optimum_folder(tmp_path / "short", id2label={"0": "red", "1": "green"})
    images, labels = colour_images(10)
    send_locally(home, images, labels)
    proc = home.luigi("PredictTask", "--require-stream", "false", "--model-path", str(folder), check=False)
    assert proc.returncode == 30 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("vectorai error: ")]
    assert line == (f"vectorai error: model {folder}: the model card does not fit: id2label has no entry "
                    "for class 2 (the output has 3 classes)")
    with sqlite3.connect(home.data / "stream" / "vectorai-images.sqlite") as queue:
        assert queue.execute("SELECT COUNT(*) FROM cursors WHERE committed > 0").fetchone()[0] == 0
    assert not (home.data / "predictions.sqlite").exists()


def test_a_foreign_model_registered_with_an_eval_file_gets_a_drift_reference_from_it(home, tmp_path):
    """vectorai-register --eval-file stores the model's outputs on that file (90 noisy colour
    images it never trained on: it trained on none) with the version; PredictTask tests a stream
    against them, a window of 60 at a time: 60 images of the same mix pass, 60 all-red ones are
    flagged."""
    project = home
    good = optimum_folder(tmp_path / "good", channel_order="BGR", card={"channel_order": "BGR"})
    eval_images, eval_labels = colour_images(90, seed=7, sizes=((32, 32),))
    np.savez(tmp_path / "eval.npz", x=np.stack(eval_images), y=eval_labels)
    registered = subprocess.run([sys.executable, "-m", "tasks.register", str(good), "--name", "colours",
                                 "--eval-file", str(tmp_path / "eval.npz")],
                                cwd=project.root, env=project.command_env(), capture_output=True, text=True,
                                timeout=300)
    assert registered.returncode == 0, registered.stderr[-3000:]

    alike, alike_labels = colour_images(60, seed=9)
    reds, labels = colour_images(200, seed=11)
    red_only = [image for image, label in zip(reds, labels) if label == 0][:60]
    send_locally(project, alike + red_only, np.concatenate([alike_labels, np.zeros(len(red_only), np.int64)]))
    project.luigi("PredictTask", "--require-stream", "false", "--model-uri", "models:/colours@champion",
                  "--drift-window", "60")
    [report] = [json.loads(p.read_text()) for p in (project.data / "reports").glob("*.json")]
    drift = report["drift"]
    assert drift["reference"] == {"images": 90, "source": "eval file eval.npz"}
    assert drift["tested_windows"] == 2 and [w["drifted"] for w in drift["windows"]] == [False, True]
    assert drift["drifted"] and drift["p_value"] < 0.01 and drift["distances"]["class_mix"] > 0.5
