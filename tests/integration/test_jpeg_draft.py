"""JPEG draft mode against full decoding, judged by the chain's own trained model."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vectorai.datasets import load_dataset
from vectorai.inference import OnnxClassifier
from vectorai.messages import decode_messages
from vectorai.predict.stages import model_pixels
from vectorai.transports.base import ReceivedMessage


def test_draft_mode_classifies_digits_upscaled_to_photos_as_full_decoding_does(trained_home, tmp_path):
    (model_file,) = (trained_home / "models").glob("mnist-sample-*/onnx/model.onnx")
    classifier = OnnxClassifier(model_file)
    digits = load_dataset("mnist-sample", tmp_path)
    chosen = np.random.default_rng(0).choice(len(digits), 1000, replace=False)
    messages = []
    for i in chosen:
        # A 28x28 digit as a 640x480 colour photo: 1/8 of its size is still larger than 28x28,
        # so draft mode decodes it at 80x60 before resizing.
        photo = Image.fromarray(digits.images[i]).resize((640, 480), Image.BICUBIC).convert("RGB")
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=85)
        messages.append(ReceivedMessage(source="test", payload=buffer.getvalue(), position=str(i),
                                        attributes={"id": f"d{i}", "content-type": "image/jpeg"}))

    classes = {}
    for draft in (True, False):
        decoded = decode_messages(messages, spec=classifier.spec, jpeg_draft=draft)
        assert not decoded.failures
        classes[draft] = classifier.predict_proba(model_pixels(decoded.images, classifier.spec)).argmax(axis=1)

    agreement = (classes[True] == classes[False]).mean()
    assert agreement >= 0.995, f"top-1 agrees on {agreement:.2%} of 1,000 digits"
    # And both still read the digits: the upscaled photos are the same digits.
    labels = digits.labels[chosen]
    assert (classes[True] == labels).mean() >= 0.95 and (classes[False] == labels).mean() >= 0.95
