"""The ONNX ``metadata_props`` keys that make a model file self-describing.

Export writes them, inference and the model card read them; benchmarks and tests build small
models with them. Keeping the names here means a key is spelt once.
"""

from __future__ import annotations

from typing import Any, Mapping

#: JSON list of the class names, in output order.
CLASS_NAMES = "vectorai.class_names"
#: JSON of the ``PreprocessSpec`` the model was trained with.
PREPROCESS = "vectorai.preprocess"
#: The version string the export named the model with.
MODEL_VERSION = "vectorai.model_version"
#: JSON of the model card bound at registration (models trained elsewhere).
CARD = "vectorai.card"

#: The temperature that calibrates the model's probabilities (``vectorai.calibration``), as text;
#: absent: 1, the outputs as they are.
TEMPERATURE = "vectorai.temperature"
#: JSON of the model's reference outputs on images it did not train on (``vectorai.drift``).
REFERENCE = "vectorai.reference"

KEYS = (CLASS_NAMES, PREPROCESS, MODEL_VERSION, CARD, TEMPERATURE, REFERENCE)


def set_metadata(model: Any, values: Mapping[str, str]) -> None:
    """Write ``values`` into an ``onnx.ModelProto``'s metadata_props, replacing entries of the same
    key and keeping every other entry in its order."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in kept + list(values.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
