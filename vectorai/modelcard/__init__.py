"""Foreign models: the card that says what an ONNX classifier takes and gives (Hugging Face
optimum folders, ``vectorai.json``), preprocessing that matches ``transformers``' image
processors, and registering such a model as a version like our own exports."""

from vectorai.modelcard.card import (CARD_FILE, CARD_KEYS, META_CARD, ModelCard, bind, load_card, model_file,
                                     read_card)
from vectorai.modelcard.image_processing import ImageProcessing

__all__ = ["CARD_FILE", "CARD_KEYS", "META_CARD", "ImageProcessing", "ModelCard", "bind", "load_card",
           "model_file", "read_card"]
