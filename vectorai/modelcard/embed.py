"""A bound card written into the ONNX file it describes, and the digest of what is registered.

The card is written into the ONNX file's metadata (``vectorai.card``): the registered
``model.onnx`` alone is then a complete model, and the cache's SHA-256 covers its card.
Registering the model (``vectorai.registry.foreign``) uses both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from vectorai import onnx_metadata
from vectorai.modelcard.card import CARD_FILE, HF_CONFIG, HF_PREPROCESSOR, card_folder, model_file


def embed_card(path: Path, card: Mapping[str, Any] | None, out: Path, extra: Mapping[str, str] | None = None) -> Path:
    """A copy of ``path``'s ONNX graph at ``out`` with ``card`` (None: none) and ``extra``
    (other ``onnx_metadata`` keys) in its metadata, older entries of those keys replaced; the
    graph itself is unchanged."""
    import onnx

    model = onnx.load(str(model_file(path)))
    values = dict(extra or {})
    if card is not None:
        values[onnx_metadata.CARD] = json.dumps(card, sort_keys=True)
    onnx_metadata.set_metadata(model, values)
    onnx.save(model, str(out))
    return out


def model_digest(path: Path) -> str:
    """SHA-256 over the ONNX file and the card files beside it: what a registration is of."""
    digest = hashlib.sha256()
    folder = card_folder(path)
    for file in [model_file(path)] + [folder / n for n in (HF_CONFIG, HF_PREPROCESSOR, CARD_FILE)]:
        if file.is_file():
            digest.update(file.name.encode() + b"\0")
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
