"""Foreign models: the card that says what an ONNX classifier takes and gives (Hugging Face
optimum folders, ``vectorai.json``), preprocessing that matches ``transformers``' image
processors, and the card embedded in the ONNX file that is registered. Registering such a
model is ``vectorai.registry.register_foreign_model``."""

from vectorai.modelcard.card import CARD_FILE, CARD_KEYS, ModelCard, bind, load_card, model_file, read_card
from vectorai.modelcard.embed import embed_card, model_digest
from vectorai.modelcard.image_processing import ImageProcessing

__all__ = ["CARD_FILE", "CARD_KEYS", "ImageProcessing", "ModelCard", "bind", "embed_card", "load_card",
           "model_digest", "model_file", "read_card"]
