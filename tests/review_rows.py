"""Real rows for the results page's tests, written by the pipeline's own writer
(``vectorai.db.write_results``): images encoded as producers send them (PNG, JPEG, raw pixels),
shadow predictions, and dead letters of several kinds."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np

from vectorai import db
from vectorai.messages import encode_image

#: An id a hostile producer could send: the page must show it as text and never run it.
SCRIPT_ID = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
START = dt.datetime(2026, 12, 1, 12, 0, 0)
ENCODINGS = ("png", "jpeg", "raw")


def digit_image(index: int, size: int = 28) -> np.ndarray:
    """A distinct, recognisable greyscale image per index (a bright bar at a place of its own)."""
    image = np.zeros((size, size), dtype=np.uint8)
    bar = max(1, size // 7)
    row = (index * 5) % (size - bar)
    image[row:row + bar, 1:size - 1] = 255
    image[:, (index * 3) % size] = 128
    return image


def prediction_rows(count: int, *, model_version: str = "vectorai-test/1", source: str = "local",
                    id_prefix: str = "msg") -> list[dict]:
    """``count`` prediction rows: class i % 3, confidence spread over [0.3, 1), a true label on
    every other row (wrong on every fourth), a minute apart, the three encodings in turn; margins
    spread over [0, 1) in another order, and the label's probability: high where it is right."""
    rows = []
    for i in range(count):
        message = encode_image(digit_image(i), f"{id_prefix}-{i:04d}", encoding=ENCODINGS[i % 3])
        predicted = i % 3
        label = None if i % 2 else ((predicted + 1) % 3 if i % 4 == 0 else predicted)
        rows.append({
            "source": source, "message_id": message.attributes["id"], "position": f"t@{i}",
            "image": message.payload, "content_type": message.attributes["content-type"],
            "predicted_class": predicted, "predicted_name": f"class{predicted}",
            "confidence": 0.3 + 0.7 * (i % 10) / 10, "true_label": label,
            "model_version": model_version, "produced_at": None, "predicted_at": START + dt.timedelta(minutes=i),
            "margin": (i * 37 % 100) / 100,
            "label_probability": None if label is None else (0.9 if label == predicted else 0.01) + (i % 50) / 1000,
        })
    return rows


def shadow_rows(predictions: list[dict], model_version: str = "vectorai-test/2") -> list[dict]:
    """The shadow model agrees except on every fifth row."""
    return [{"source": p["source"], "message_id": p["message_id"], "model_version": model_version,
             "predicted_class": (p["predicted_class"] + (1 if i % 5 == 0 else 0)) % 3,
             "predicted_name": f"class{(p['predicted_class'] + (1 if i % 5 == 0 else 0)) % 3}",
             "confidence": 0.5, "true_label": p["true_label"], "predicted_at": p["predicted_at"]}
            for i, p in enumerate(predictions)]


def dead_letter_rows() -> list[dict]:
    """A payload that decodes (its label was bad), one that does not, and one with a hostile id."""
    png = encode_image(digit_image(7), "x").payload

    def letter(i: int, reason: str, attributes: dict, payload: bytes) -> dict:
        return {"source": "local", "message_id": attributes.get("id"), "position": f"dl@{i}",
                "fingerprint": f"f{i}", "reason": reason, "attributes": json.dumps(attributes),
                "payload": payload, "payload_size": len(payload), "received_at": START + dt.timedelta(seconds=i)}

    return [
        letter(0, "label 'seven' is not an integer", {"id": "bad-label", "content-type": "image/png",
                                                      "label": "seven"}, png),
        letter(1, "cannot decode image: broken PNG file", {"id": "broken", "content-type": "image/png"},
               b"\x89PNG\r\n\x1a\n<html>not an image</html>"),
        letter(2, "unknown content-type 'text/html'; expected one of image/png",
               {"id": SCRIPT_ID, "content-type": "text/html"}, b"<script>window.__pwned = 3</script>"),
    ]


def fill(database, count: int = 60) -> list[dict]:
    """Write ``count`` predictions (the last with SCRIPT_ID), their shadow rows and the dead
    letters through the pipeline's writer; returns the prediction rows."""
    rows = prediction_rows(count)
    rows[-1]["message_id"] = SCRIPT_ID
    assert db.write_results(database, rows, dead_letter_rows(), shadow_rows(rows)) == count
    return rows
