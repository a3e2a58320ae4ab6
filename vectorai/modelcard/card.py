"""A model card: what a foreign ONNX classifier takes and gives, read from the files beside it.

Three forms of model are served (``load_card`` reads the last two; our own exports carry their
metadata inside the ONNX file and never get here):

- a folder as Hugging Face optimum exports an image classifier: ``model.onnx``, ``config.json``
  (``id2label``) and ``preprocessor_config.json`` (the image processor's keys); the input is
  NCHW ``pixel_values``, the output ``logits``;
- a ``vectorai.json`` beside the model (in its folder, with or without the two files above,
  whose keys it overrides) for anything else: layout, channel order, output kind, input and
  output by name, class names inline or as a text file, and the image processor's keys;
- a registered version: the card, bound and checked at registration, inside the ONNX file's
  metadata (``vectorai.card``), so that it travels with the version and its SHA-256.

A card is checked against the graph before it is used (``bind``): input rank and size, channels,
output width against the class names, one run on a blank image; anything that does not fit is
one ModelError line naming the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vectorai import onnx_metadata
from vectorai.errors import ModelError
from vectorai.modelcard.image_processing import CardValueError, ImageProcessing

CARD_FILE = "vectorai.json"
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"

LAYOUTS = ("NCHW", "NHWC", "flat")
CHANNEL_ORDERS = ("RGB", "BGR", "L")
OUTPUT_KINDS = ("probabilities", "logits", "log_probabilities")
#: Every key ``vectorai.json`` (and ``vectorai-register``'s flags) may hold.
CARD_KEYS = ("model", "input", "output", "layout", "channel_order", "output_kind", "class_names",
             "class_names_file", "id2label", "preprocessor")


@dataclass(frozen=True)
class ModelCard:
    """A card bound to its graph: every name resolved, every size known."""

    class_names: tuple[str, ...]
    processing: ImageProcessing
    layout: str
    channel_order: str
    output_kind: str
    input_name: str
    output_name: str

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's images."""
        return self.processing.output_size()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One image's shape as the model takes it."""
        (height, width), channels = self.size, self.channels
        return {"NCHW": (channels, height, width), "NHWC": (height, width, channels),
                "flat": (height * width * channels,)}[self.layout]

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Decoded images (any sizes, uint8 or not) to one float32 batch in the model's layout."""
        out = np.empty((len(images), *self.input_shape), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.arrange(self.processing.process(image, self.channels))
        return out

    def arrange(self, chw: np.ndarray) -> np.ndarray:
        """A processed (C, H, W) RGB image in the model's channel order and layout. The mean and
        std are in RGB order, as in preprocessor_config.json; BGR reverses the channels after."""
        if self.channel_order == "BGR":
            chw = chw[::-1]
        if self.layout == "NCHW":
            return chw
        hwc = np.moveaxis(chw, 0, -1)
        return hwc if self.layout == "NHWC" else hwc.reshape(-1)

    def to_probabilities(self, output: np.ndarray) -> np.ndarray:
        """The model's output as class probabilities (rows sum to 1 for logits and log-probabilities)."""
        values = np.asarray(output, dtype=np.float32)
        if self.output_kind == "logits":
            shifted = values - values.max(axis=1, keepdims=True)  # no overflow in exp
            exp = np.exp(shifted)
            return exp / exp.sum(axis=1, keepdims=True)
        if self.output_kind == "log_probabilities":
            return np.exp(values)
        return values

    def to_dict(self) -> dict[str, Any]:
        """The card as ``vectorai.json`` keys, class names inline: what registration embeds."""
        return {"input": self.input_name, "output": self.output_name, "layout": self.layout,
                "channel_order": self.channel_order, "output_kind": self.output_kind,
                "class_names": list(self.class_names), "preprocessor": self.processing.to_config()}

    def describe(self) -> str:
        height, width = self.size
        return (f"{self.layout} {self.channel_order} {height}x{width} {self.input_name} -> {self.output_kind} "
                f"{self.output_name} ({len(self.class_names)} classes)")


# --- reading the files ------------------------------------------------------------------------


def card_folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def model_file(path: Path) -> Path:
    """The ONNX file ``path`` names: itself, or in a folder ``model.onnx`` (or the file its
    ``vectorai.json`` names under ``model``)."""
    if not path.is_dir():
        return path
    card = _read_json(path / CARD_FILE, path) if (path / CARD_FILE).is_file() else {}
    name = card.get("model", "model.onnx")
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelError(path, f"{CARD_FILE}: model must name a file in the folder, not {name!r}")
    return path / name


def read_card(path: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The card's keys from the files in ``path``'s folder, then ``overrides`` (the same keys,
    from flags); None when there is no card at all. Class names from a file are read here."""
    folder = card_folder(path)
    found = {name: folder / name for name in (HF_CONFIG, HF_PREPROCESSOR, CARD_FILE) if (folder / name).is_file()}
    if not found and not overrides:
        return None
    raw: dict[str, Any] = {}
    if HF_CONFIG in found:
        config = _read_json(found[HF_CONFIG], path)
        if "id2label" in config:
            raw["id2label"] = config["id2label"]
    if HF_PREPROCESSOR in found:
        raw["preprocessor"] = _read_json(found[HF_PREPROCESSOR], path)
    for source, keys in (((found[CARD_FILE], _read_json(found[CARD_FILE], path)),) if CARD_FILE in found else ()) \
            + ((("flags", dict(overrides)),) if overrides else ()):
        unknown = sorted(set(keys) - set(CARD_KEYS))
        if unknown:
            raise ModelError(path, f"{source}: unknown key {unknown[0]!r}; a card takes {', '.join(CARD_KEYS)}")
        for key, value in keys.items():
            if key == "preprocessor" and isinstance(value, Mapping) and isinstance(raw.get(key), Mapping):
                raw[key] = {**raw[key], **value}  # vectorai.json's keys over preprocessor_config.json's
            elif key in ("class_names", "class_names_file", "id2label"):
                for other in ("class_names", "class_names_file", "id2label"):
                    raw.pop(other, None)  # the last source that names the classes names them all
                raw[key] = value
            else:
                raw[key] = value
    if "class_names_file" in raw:
        raw["class_names"] = _class_names_file(raw.pop("class_names_file"), folder, path)
    return raw


def _read_json(file: Path, model: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(model, f"{file.name} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelError(model, f"{file.name} must hold a JSON object, not {type(data).__name__}")
    return data


def _class_names_file(name: Any, folder: Path, model: Path) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ModelError(model, f"class_names_file must be a file name, not {name!r}")
    file = Path(name) if Path(name).is_absolute() else folder / name
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(model, f"class_names_file {name}: {err.strerror if isinstance(err, OSError) else err}") \
            from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


# --- binding a card to its graph --------------------------------------------------------------


def _choice(raw: Mapping[str, Any], key: str, allowed: Sequence[str], default: str) -> str:
    value = raw.get(key, default)
    if value not in allowed:
        raise CardValueError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _pick(raw: Mapping[str, Any], key: str, names: list[str], preferred: str, what: str) -> str:
    name = raw.get(key)
    if name is not None:
        if name not in names:
            raise CardValueError(f"the graph has no {what} named {name!r} (it has {', '.join(names)})")
        return name
    if len(names) == 1:
        return names[0]
    if preferred in names:
        return preferred
    raise CardValueError(f"the graph has {len(names)} {what}s ({', '.join(names)}); name one with {key!r}")


def _class_names(raw: Mapping[str, Any], width: int) -> tuple[str, ...]:
    if "class_names" in raw:
        names = raw["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CardValueError("class_names must be a list of strings")
        if len(names) != width:
            raise CardValueError(f"the output has {width} classes but the card names {len(names)}")
        return tuple(names)
    if "id2label" in raw:
        id2label = raw["id2label"]
        if not isinstance(id2label, Mapping):
            raise CardValueError("id2label must be an object of class index to name")
        labels = {str(k): v for k, v in id2label.items()}
        missing = [i for i in range(width) if str(i) not in labels]
        if missing:
            raise CardValueError(f"id2label has no entry for class {missing[0]} (the output has {width} classes)")
        if len(labels) != width:
            raise CardValueError(f"the output has {width} classes but id2label names {len(labels)}")
        return tuple(str(labels[str(i)]) for i in range(width))
    raise CardValueError("no class names: give config.json with id2label, or class_names or class_names_file "
                         f"in {CARD_FILE}")


def bind(raw: Mapping[str, Any], session, model: str | Path) -> ModelCard:
    """The card ``raw`` checked against the onnxruntime ``session``: ModelError naming
    ``model`` and what does not fit, else the bound card."""
    try:
        return _bind(raw, session)
    except CardValueError as err:
        raise ModelError(model, f"the model card does not fit: {err}") from None


def _bind(raw: Mapping[str, Any], session) -> ModelCard:
    if "preprocessor" not in raw:
        raise CardValueError(f"no image processor: give {HF_PREPROCESSOR}, or preprocessor in {CARD_FILE}")
    processing = ImageProcessing.from_config(raw["preprocessor"])
    layout = _choice(raw, "layout", LAYOUTS, "NCHW")
    channel_order = _choice(raw, "channel_order", CHANNEL_ORDERS, "RGB")
    output_kind = _choice(raw, "output_kind", OUTPUT_KINDS, "logits")
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    input_name = _pick(raw, "input", list(inputs), "pixel_values", "input")
    output_name = _pick(raw, "output", list(outputs), "logits", "output")
    channels = 1 if channel_order == "L" else 3

    graph_input = inputs[input_name]
    if graph_input.type != "tensor(float)":
        raise CardValueError(f"input {input_name} is {graph_input.type}; only float32 image inputs are served")
    shape = list(graph_input.shape)
    height, width = processing.output_size()
    rank = 2 if layout == "flat" else 4
    if len(shape) != rank:
        raise CardValueError(f"input {input_name} has rank {len(shape)} (shape {_shape(shape)}) but layout "
                             f"{layout} needs rank {rank}")
    axes = {"NCHW": {1: ("channels", channels), 2: ("height", height), 3: ("width", width)},
            "NHWC": {1: ("height", height), 2: ("width", width), 3: ("channels", channels)},
            "flat": {1: ("values (height x width x channels)", height * width * channels)}}[layout]
    for axis, (what, want) in axes.items():
        if isinstance(shape[axis], int) and shape[axis] != want:
            raise CardValueError(f"input {input_name} {_shape(shape)} has {shape[axis]} {what} on axis {axis} but the "
                                 f"card gives {want} ({layout} {channel_order} {height}x{width})")
    processing.check_channels(channels)

    card = ModelCard((), processing, layout, channel_order, output_kind, input_name, output_name)
    try:
        [probe] = session.run([output_name], {input_name: np.zeros((1, *card.input_shape), np.float32)})
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        raise CardValueError(f"the graph fails on one blank image: {str(err).splitlines()[0]}") from None
    if not isinstance(probe, np.ndarray):
        raise CardValueError(f"output {output_name} is a {type(probe).__name__}, not a tensor (for skl2onnx, "
                             "export with options={id(model): {'zipmap': False}})")
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise CardValueError(f"output {output_name} has shape {list(probe.shape)} for one image; it must be "
                             "(images, classes)")
    return ModelCard(_class_names(raw, int(probe.shape[1])), processing, layout, channel_order, output_kind,
                     input_name, output_name)


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def load_card(path: Path, session, metadata: Mapping[str, str],
              overrides: Mapping[str, Any] | None = None) -> ModelCard:
    """The card of a model without our own metadata: the one embedded at registration, else the
    files beside it (and ``overrides``), bound to ``session``."""
    if onnx_metadata.CARD in metadata and not overrides:
        try:
            raw = json.loads(metadata[onnx_metadata.CARD])
        except ValueError as err:
            raise ModelError(path, f"its embedded model card is not JSON ({err})") from None
    else:
        raw = read_card(path, overrides)
    if raw is None:
        raise ModelError(path, "no vectorai metadata and no model card: give a folder with config.json and "
                         f"{HF_PREPROCESSOR} (Hugging Face optimum's layout) or a {CARD_FILE} beside the model, or "
                         "re-export it with ExportOnnx")
    return bind(raw, session, path)
