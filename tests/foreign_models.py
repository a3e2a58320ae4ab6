"""Foreign models for the tests: hand-built ONNX graphs in the layouts other tools export, with
the card files beside them (Hugging Face optimum's folder, or vectorai.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = ["red", "green", "blue"]
#: ViT-style image processor: resize to a square, scale to [0, 1], normalise to [-1, 1].
VIT_PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                    "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def colour_graph(path: Path, *, layout: str = "NCHW", channel_order: str = "RGB", output: str = "logits",
                 size: tuple[int, int] = (32, 32), weights: np.ndarray | None = None, input_name: str = "pixel_values",
                 output_name: str = "logits", classes: int = 3) -> np.ndarray:
    """A classifier of an image's mean colour: the mean of each channel times ``weights``
    (channels x classes; default: class k is the k-th colour of COLOURS, read from the channel
    that holds it in ``channel_order``). ``output``: logits, probabilities (Softmax) or
    log_probabilities (LogSoftmax). Returns the weights, in the model's channel order."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    height, width = size
    if weights is None:
        weights = np.zeros((3, classes), np.float32)
        order = "BGR" if channel_order == "BGR" else "RGB"
        for k in range(min(classes, 3)):
            weights[order.index("RGB"[k]), k] = 8.0
    weights = np.asarray(weights, np.float32)
    channels = weights.shape[0]
    nodes, inits = [], [numpy_helper.from_array(weights, "w")]
    if layout == "flat":
        shape = ["batch", height * width * channels]
        # The mean of each channel of an HWC-flattened image, as one matrix product.
        pick = np.tile(np.eye(channels, dtype=np.float32), (height * width, 1)) / (height * width)
        inits.append(numpy_helper.from_array(pick, "pick"))
        nodes.append(helper.make_node("MatMul", [input_name, "pick"], ["means"]))
    else:
        shape = ["batch", channels, height, width] if layout == "NCHW" else ["batch", height, width, channels]
        nodes.append(helper.make_node("ReduceMean", [input_name], ["means"],
                                      axes=[2, 3] if layout == "NCHW" else [1, 2], keepdims=0))
    last = "raw" if output != "logits" else output_name
    nodes.append(helper.make_node("MatMul", ["means", "w"], [last]))
    if output == "probabilities":
        nodes.append(helper.make_node("Softmax", ["raw"], [output_name], axis=1))
    elif output == "log_probabilities":
        nodes.append(helper.make_node("LogSoftmax", ["raw"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", weights.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weights


def optimum_folder(folder: Path, *, preprocessor: dict | None = None, id2label: dict | None = None,
                   card: dict | None = None, **graph) -> Path:
    """A folder as optimum exports an image classifier (model.onnx, config.json,
    preprocessor_config.json), plus ``card`` as vectorai.json when given."""
    folder.mkdir(parents=True, exist_ok=True)
    colour_graph(folder / "model.onnx", **graph)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["ColourForImageClassification"], "model_type": "colour",
        "id2label": id2label if id2label is not None else {str(i): c for i, c in enumerate(COLOURS)},
        "label2id": {c: i for i, c in enumerate(COLOURS)}}))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor or VIT_PREPROCESSOR))
    if card is not None:
        (folder / "vectorai.json").write_text(json.dumps(card))
    return folder


def colour_images(count: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((24, 40), (48, 30), (32, 32))
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """Noisy RGB uint8 images of several sizes whose dominant channel is the label (0 red,
    1 green, 2 blue)."""
    rng = np.random.default_rng(seed)
    images, labels = [], rng.integers(0, 3, count)
    for i, label in enumerate(labels):
        height, width = sizes[i % len(sizes)]
        image = rng.integers(0, 110, (height, width, 3))
        image[..., label] += rng.integers(60, 145)
        images.append(image.astype(np.uint8))
    return images, labels
