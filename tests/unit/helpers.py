"""Tiny models and messages built in the tests themselves (no TensorFlow needed)."""

from __future__ import annotations

import json
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
