"""Models built for the benchmark with ``onnx.helper``: the graph of a known architecture with random
weights, as what a model of that size costs per image (speed, not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.inputs import PHOTO_MODEL_SIDE

#: MobileNetV2's inverted residual stages: (expansion, output channels, blocks, first stride).
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _ConvNet:
    """The nodes and initialisers of a graph being built, convolution by convolution, each with
    He-style random weights drawn in order from one generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        from onnx import numpy_helper

        self.rng = rng
        self.nodes: list[Any] = []
        self.weights: list[Any] = [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                                   numpy_helper.from_array(np.array(6, np.float32), "six")]

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def weight(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, cin: int, cout: int, kernel: int, stride: int, group: int = 1, relu6: bool = True) -> str:
        name = f"conv{len(self.nodes)}"
        fan_in = kernel * kernel * cin // group
        self.weight(name + ".w", self.rng.normal(0, (1.0 / fan_in) ** 0.5,
                                                 (cout, cin // group, kernel, kernel)).astype(np.float32))
        self.weight(name + ".b", np.zeros(cout, np.float32))
        self.node("Conv", [x, name + ".w", name + ".b"], name, kernel_shape=[kernel, kernel],
                  strides=[stride, stride], pads=[kernel // 2] * 4, group=group)
        return self.node("Clip", [name, "zero", "six"], name + ".relu6") if relu6 else name

    def inverted_residual(self, x: str, channels: int, out: int, expansion: int, stride: int) -> str:
        """Expand (1x1), depthwise (3x3), project (1x1, linear); added to its input where the
        shapes allow."""
        hidden = channels * expansion
        h = self.conv(x, channels, hidden, 1, 1) if expansion != 1 else x
        h = self.conv(h, hidden, hidden, 3, stride, group=hidden)
        h = self.conv(h, hidden, out, 1, 1, relu6=False)
        if stride == 1 and channels == out:
            h = self.node("Add", [x, h], h + ".add")
        return h


def mobilenet_v2_onnx(path: Path, side: int = PHOTO_MODEL_SIDE, classes: int = 1000, seed: int = 0) -> Path:
    """MobileNetV2's graph (Sandler et al. 2018, width 1.0: inverted residual blocks, ReLU6,
    about 300 M multiply-adds at 224x224) with random weights, as ONNX with vectorai's metadata
    and NHWC input; built with onnx.helper once and kept at ``path``. Speed, not accuracy: what
    a photo model costs per image."""
    if path.is_file():
        return path
    import onnx
    from onnx import TensorProto, helper

    from vectorai import onnx_metadata

    net = _ConvNet(np.random.default_rng(seed))
    x, channels = net.conv(net.node("Transpose", ["image"], "nchw", perm=[0, 3, 1, 2]), 3, 32, 3, 2), 32
    for expansion, out, repeats, first_stride in MOBILENET_V2_STAGES:
        for i in range(repeats):
            x = net.inverted_residual(x, channels, out, expansion, first_stride if i == 0 else 1)
            channels = out
    x = net.conv(x, channels, 1280, 1, 1)
    net.weight("fc.w", net.rng.normal(0, 0.03, (1280, classes)).astype(np.float32))
    net.weight("fc.b", np.zeros(classes, np.float32))
    net.node("GlobalAveragePool", [x], "pooled")
    net.node("Flatten", ["pooled"], "features", axis=1)
    net.node("Gemm", ["features", "fc.w", "fc.b"], "logits")
    net.node("Softmax", ["logits"], "probabilities", axis=1)
    graph = helper.make_graph(
        net.nodes, "mobilenet_v2_random",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", side, side, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])], initializer=net.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_metadata.set_metadata(model, {
        onnx_metadata.CLASS_NAMES: json.dumps([f"class{i}" for i in range(classes)]),
        onnx_metadata.PREPROCESS: json.dumps({"height": side, "width": side, "channels": 3}),
        onnx_metadata.MODEL_VERSION: "mobilenetv2-random"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    onnx.save(model, str(partial))
    partial.replace(path)  # never a half-written model in the cache
    return path
