"""Whatever numbers a model gives (NaN, infinities, anything a float holds), every decoded
message is stored as exactly one row with a finite confidence or one dead letter saying why, and
the batch is written without an error; a shadow model's non-finite rows are left out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.unit.helpers import cached_tiny_classifier
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import decode_batch, label_batch, shadow_rows
from vectorai.transports.base import ReceivedMessage

CLASSES = 3


class _Source:
    name = "prop"


def _classifier() -> OnnxClassifier:
    return cached_tiny_classifier(classes=CLASSES)


def _messages(count: int) -> list[ReceivedMessage]:
    images = np.random.default_rng(count).integers(0, 256, (count, 8, 8), dtype=np.uint8)
    return [ReceivedMessage("prop", m.payload, m.attributes, f"prop@{i}")
            for i, m in enumerate(encode_image(image, f"m{i}") for i, image in enumerate(images))]


@pytest.fixture(scope="module")
def database():
    db = results_db.connect("sqlite:///:memory:")
    yield db
    db.close()


ANY_FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), count=st.integers(1, 8))
def test_every_message_is_one_row_with_a_finite_confidence_or_one_dead_letter(database, data, count):
    classifier = _classifier()
    decoded = decode_batch(_Source(), _messages(count), classifier)
    output = data.draw(arrays(np.float32, (count, CLASSES), elements=ANY_FLOAT), label="output")
    batch = label_batch(decoded, output, classifier)
    finite = np.isfinite(output).all(axis=1)

    assert [row["message_id"] for row in batch.rows] == [f"m{i}" for i in range(count) if finite[i]]
    assert all(math.isfinite(row["confidence"]) for row in batch.rows)
    assert [d["message_id"] for d in batch.dead] == [f"m{i}" for i in range(count) if not finite[i]]
    assert {d["reason"] for d in batch.dead} <= {"the model's output for this image is not finite (NaN or "
                                                 "infinity among model tiny-v1's class probabilities)"}
    shadow_output = data.draw(arrays(np.float32, (count, CLASSES), elements=ANY_FLOAT), label="shadow")
    shadow = shadow_rows(batch, shadow_output, classifier)
    assert [row["message_id"] for row in shadow] == [
        f"m{i}" for i in range(count) if finite[i] and np.isfinite(shadow_output[i]).all()]
    with database.atomic() as transaction:
        written = results_db.write_batch(database, batch.rows, batch.dead, shadow)
        assert written == (len(batch.rows), None)
        assert results_db.Prediction.select().count() == len(batch.rows)
        assert results_db.DeadLetter.select().count() == len(batch.dead)
        assert results_db.ShadowPrediction.select().count() == len(shadow)
        transaction.rollback()  # each example starts from empty tables
