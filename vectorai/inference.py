"""Classify preprocessed batches with onnxruntime. Never imports TensorFlow."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from vectorai import onnx_metadata
from vectorai.calibration import apply_temperature
from vectorai.drift import OutputSummary
from vectorai.errors import ModelError
from vectorai.preprocess import PreprocessSpec, as_model_input, preprocess_images


@dataclass(frozen=True)
class ModelInfo:
    class_names: list[str]
    spec: PreprocessSpec
    version: str


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """onnxruntime threads for the prediction loop: every core but one.

    The loop runs the model on a background thread while its own thread decodes the next batch
    and writes the previous one. Leaving that thread a core of its own measured faster than
    giving the model every core, whose threads then wait for each other while one of them is
    preempted (on 2 cores, Kafka+PostgreSQL ran at 5,530-5,820 images/s with one thread against
    4,400-4,660 with two, three runs each; local+SQLite was within noise either way). That core
    is not lost to the model: whenever the loop would wait for it, the loop's thread classifies
    part of the batch itself (``predict.concurrency.Job``).
    """
    return max(1, available_cores() - 1)


def _session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One intra-op pool; inter-op parallelism only adds contention for a sequential CNN graph.
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Between two batches the caller decodes messages and writes rows on the same cores; pool
    # threads spinning while they wait for the next run would take that CPU away from it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory pattern: it plans one block on the first run and allocates it on the second, a
    # step in memory mid-stream; the arena already reuses buffers between batches.
    options.enable_mem_pattern = False
    return options


class OnnxClassifier:
    """An ONNX classifier plus what it needs to be used: class names and preprocessing.

    ``path`` is one of our exports (a ``.onnx`` whose metadata holds class names and
    preprocessing), or a foreign model with a card (``vectorai.modelcard``): a Hugging Face
    optimum folder, a folder or file with ``vectorai.json``, or a registered version whose card
    is embedded. Either way ``preprocess`` turns decoded images into the model's input and
    ``predict_proba`` gives class probabilities."""

    def __init__(self, path: str | Path, threads: int | None = None, version: str | None = None,
                 card_overrides: dict | None = None) -> None:
        """``version``: what rows record as the model version instead of the one stored in the
        file (a registered model's ``NAME/VERSION``). ``card_overrides``: card keys given as
        flags, over the card's files."""
        import onnxruntime as ort

        from vectorai.modelcard import load_card, model_file

        self.path = Path(path)
        #: onnxruntime's intra-op threads: the prediction loop decodes on the cores left over.
        self.threads = threads or default_threads()
        onnx_file = model_file(self.path)
        if not onnx_file.is_file():
            raise ModelError(self.path, "file not found; run ExportOnnx first" if onnx_file == self.path
                             else f"no {onnx_file.name} in the folder")
        try:
            self._session = ort.InferenceSession(
                str(onnx_file), sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelError(self.path, f"cannot load ONNX model: {str(err).splitlines()[0]}") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        #: The foreign model's card; None for our own exports.
        self.card = None
        if onnx_metadata.PREPROCESS in meta and onnx_metadata.CLASS_NAMES in meta and not card_overrides:
            self.info = _read_info(self.path, self._session)
            self._input_name, self._output_name = self._session.get_inputs()[0].name, None
            shape = self._session.get_inputs()[0].shape
            want = (self.info.spec.height, self.info.spec.width, self.info.spec.channels)
            if len(shape) != 4 or tuple(shape[1:]) != want:
                raise ModelError(self.path, f"model input shape {shape} does not fit the stored "
                                 f"preprocessing {want}")
        else:
            self.card = load_card(self.path, self._session, meta, card_overrides)
            (height, width), channels = self.card.size, self.card.channels
            self.info = ModelInfo(list(self.card.class_names), PreprocessSpec(height, width, channels),
                                  meta.get(onnx_metadata.MODEL_VERSION) or self.path.stem)
            self._input_name, self._output_name = self.card.input_name, self.card.output_name
        if version is not None:
            self.info = replace(self.info, version=version)
        #: Divides the model's log-probabilities (``vectorai.calibration``); 1: none stored, as
        #: for a foreign model unless its file was given one.
        self.temperature, self.reference = _read_calibration(self.path, meta)
        if self.reference is not None and not (len(self.reference.class_counts) == len(self.reference.mean_probabilities)
                                               == len(self.class_names)):
            # Checked here, not at the first drift window, which comes after batches were acknowledged.
            raise ModelError(self.path, f"its stored drift reference has {len(self.reference.class_counts)} classes, "
                                        f"the model {len(self.class_names)}; re-export or re-register it")
        #: Each thread's float input buffer (``_float_input``).
        self._scratch = threading.local()

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def spec(self) -> PreprocessSpec:
        """The model's image height, width and channels."""
        return self.info.spec

    @property
    def preprocessing(self) -> object:
        """What preprocessing this model needs, comparable with ``==``: two models with equal
        ones take the same batch."""
        if self.card is None:
            return self.info.spec
        return (self.card.processing, self.card.layout, self.card.channel_order)

    @property
    def decode_spec(self) -> PreprocessSpec | None:
        """The spec decoding may shrink large images to on the way (our own preprocessing); None
        for a card model, whose image processor must see the decoded pixels as they are."""
        return self.info.spec if self.card is None else None

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Decoded images (an (N, H, W[, C]) array or a list of any sizes) to this model's input batch."""
        if self.card is not None:
            return self.card.preprocess(images)
        return preprocess_images(images, self.info.spec)

    def expect_spec(self, spec: PreprocessSpec) -> None:
        """Fail clearly when a configured image size/channels does not match this model."""
        if spec != self.info.spec:
            raise ModelError(self.path, f"model expects {self.info.spec.height}x{self.info.spec.width}"
                             f"x{self.info.spec.channels} images but the configuration says "
                             f"{spec.height}x{spec.width}x{spec.channels}")

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a preprocessed batch (``preprocess``); one session call. For our
        own models, (N, H, W, C) float32 in [0, 1] or uint8 pixels (scaled here, so a batch waiting
        for the model holds a quarter of the bytes)."""
        return apply_temperature(self.raw_proba(batch), self.temperature)

    def raw_proba(self, batch: np.ndarray) -> np.ndarray:
        """``predict_proba`` before calibration: the model's own probabilities."""
        if len(batch) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        if self.card is None:
            return self._session.run(None, {self._input_name: self._float_input(batch)})[0]
        return self.card.to_probabilities(self._session.run([self._output_name], {self._input_name: batch})[0])

    def _float_input(self, batch: np.ndarray) -> np.ndarray:
        """``as_model_input(batch)``, written into a buffer this thread keeps for the next call.

        A new float array per chunk is a fresh mapping (PredictTask has glibc map each buffer of
        1 MiB or more on its own, ``predict.give_large_buffers_back``) whose every page faults
        in: 0.30 ms per 224x224 photo against 0.05 reusing one. onnxruntime reads its input
        during the call only. Batches larger than ``SCRATCH_MAX_BYTES`` get a new array, so an
        evaluation of a whole test set leaves no large buffer behind."""
        if batch.dtype != np.uint8 or batch.size * 4 > SCRATCH_MAX_BYTES:
            return as_model_input(batch)
        buffer = getattr(self._scratch, "buffer", None)
        if buffer is None or buffer.size < batch.size:
            buffer = self._scratch.buffer = np.empty(batch.size, dtype=np.float32)
        return as_model_input(batch, out=buffer[:batch.size].reshape(batch.shape))


#: The largest float input ``OnnxClassifier`` keeps a buffer for, per thread: several of the
#: prediction loop's chunks (``predict.CHUNK_INPUT_BYTES``, 4.8 MB), not a whole evaluation set.
SCRATCH_MAX_BYTES = 32 * 1024 * 1024


def _read_calibration(path: Path, meta: dict[str, str]) -> tuple[float, OutputSummary | None]:
    """The stored temperature (1.0 when none) and reference outputs (None when none)."""
    try:
        temperature = float(meta.get(onnx_metadata.TEMPERATURE, "1"))
        reference = (OutputSummary.from_json(meta[onnx_metadata.REFERENCE]) if onnx_metadata.REFERENCE in meta
                     else None)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelError(path, f"malformed calibration metadata ({err}); re-export or re-register it") from None
    if not np.isfinite(temperature) or temperature <= 0:
        raise ModelError(path, f"stored temperature {temperature} is not a positive number")
    return temperature, reference


def _read_info(path: Path, session) -> ModelInfo:
    meta = session.get_modelmeta().custom_metadata_map
    try:
        return ModelInfo(
            class_names=list(json.loads(meta[onnx_metadata.CLASS_NAMES])),
            spec=PreprocessSpec.from_dict(json.loads(meta[onnx_metadata.PREPROCESS])),
            version=meta.get(onnx_metadata.MODEL_VERSION, "unknown"),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(path, f"missing or malformed vectorai metadata ({err}); re-export it with "
                         "ExportOnnx") from None
