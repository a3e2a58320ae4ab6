"""Tiny models and messages built in the tests themselves (no TensorFlow needed)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from vectorai import onnx_metadata


def tiny_onnx_model(path: Path, height: int = 8, width: int = 8, channels: int = 1, classes: int = 3,
                    seed: int = 0) -> np.ndarray:
    """A linear softmax classifier as ONNX with vectorai metadata; returns its weight matrix so a
    test can compute the expected classes independently."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(height * width * channels, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", height, width, channels])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_metadata.set_metadata(model, {
        onnx_metadata.CLASS_NAMES: json.dumps([f"class{i}" for i in range(classes)]),
        onnx_metadata.PREPROCESS: json.dumps({"height": height, "width": width, "channels": channels}),
        onnx_metadata.MODEL_VERSION: "tiny-v1"})
    onnx.save(model, str(path))
    return weights


def expected_classes(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
    """What the tiny model must predict for already-preprocessed images."""
    return (images.reshape(len(images), -1) @ weights).argmax(axis=1)


#: ``non_finite_model``'s output by an image's first pixel (0-255): at least 240, NaN in every
#: class; 220-239, +inf in class 0; 200-219, -inf in class 1 (the others finite); below 200, the
#: tiny model's probabilities.
NAN_FROM, INF_FROM, MINUS_INF_FROM = 240, 220, 200


def non_finite_model(path: Path, seed: int = 0) -> np.ndarray:
    """``tiny_onnx_model`` (3 classes, 8x8x1) whose output is NaN or an infinity for some images,
    as a broken or foreign model's can be, chosen by the first pixel (``NAN_FROM``...); returns
    the weights of the tiny model it gives for the other images."""
    import onnx
    from onnx import helper, numpy_helper

    weights = tiny_onnx_model(path, seed=seed)
    model = onnx.load(str(path))
    graph = model.graph
    graph.node[-1].output[0] = "softmax"
    constants = {
        "first_index": np.array([0], np.int64),
        "nan_from": np.array((NAN_FROM - 0.5) / 255, np.float32),
        "inf_from": np.array((INF_FROM - 0.5) / 255, np.float32),
        "minus_inf_from": np.array((MINUS_INF_FROM - 0.5) / 255, np.float32),
        "nan_row": np.full((1, 3), np.nan, np.float32),
        "inf_row": np.array([[np.inf, 0.2, 0.3]], np.float32),
        "minus_inf_row": np.array([[0.5, -np.inf, 0.5]], np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    graph.node.extend([
        helper.make_node("Gather", ["flat", "first_index"], ["first"], axis=1),
        helper.make_node("Greater", ["first", "nan_from"], ["is_nan"]),
        helper.make_node("Greater", ["first", "inf_from"], ["is_inf"]),
        helper.make_node("Greater", ["first", "minus_inf_from"], ["is_minus_inf"]),
        helper.make_node("Where", ["is_minus_inf", "minus_inf_row", "softmax"], ["with_minus_inf"]),
        helper.make_node("Where", ["is_inf", "inf_row", "with_minus_inf"], ["with_inf"]),
        helper.make_node("Where", ["is_nan", "nan_row", "with_inf"], ["probabilities"]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weights


@lru_cache(maxsize=None)
def cached_tiny_classifier(height: int = 8, width: int = 8, channels: int = 1, classes: int = 3):
    """A ``tiny_onnx_model``'s classifier kept for the session (a hypothesis test cannot take
    tmp_path); its folder is removed at exit."""
    from vectorai.inference import OnnxClassifier

    folder = Path(tempfile.mkdtemp(prefix="vectorai-tiny-"))
    atexit.register(shutil.rmtree, folder, True)
    tiny_onnx_model(folder / "tiny.onnx", height, width, channels, classes)
    return OnnxClassifier(folder / "tiny.onnx", threads=1)
