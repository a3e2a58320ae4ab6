"""A model whose output is NaN or an infinity for some images (a broken or foreign model can
give that for one image), streamed through the real local queue into SQLite and PostgreSQL:
those messages are dead letters that say why, the other images of each batch are rows, the run
succeeds, and a rerun stores nothing new. As a shadow model, its non-finite rows are left out
and counted as shadow errors.

Before, SQLite stored the NaN confidence as NULL, and ``INSERT OR IGNORE`` dropped the row that
broke NOT NULL without a word, while the message was counted as predicted and acknowledged;
PostgreSQL stored the NaN (or infinity) as a row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.unit.helpers import INF_FROM, MINUS_INF_FROM, NAN_FROM, expected_classes, non_finite_model, tiny_onnx_model
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.preprocess import preprocess_images
from vectorai.transports import open_transport

REASON = ("the model's output for this image is not finite (NaN or infinity among model tiny-v1's class "
          "probabilities)")
#: Which of the 14 images the broken model gives a non-finite output for (first pixel), spread
#: over the batches of 4: one batch holds only such images.
BROKEN = {1: NAN_FROM, 4: 255, 5: INF_FROM, 6: MINUS_INF_FROM, 7: NAN_FROM, 12: 230}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return results_db.sqlite_url(tmp_path / "results.sqlite")
    return request.getfixturevalue("pg_database")


def _images() -> np.ndarray:
    images = np.random.default_rng(5).integers(0, MINUS_INF_FROM, (14, 8, 8), dtype=np.uint8)
    for index, first in BROKEN.items():
        images[index, 0, 0] = first
    return images


def _publish(tmp_path, images: np.ndarray) -> None:
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(image, f"m{i}", label=i % 3) for i, image in enumerate(images)])
        producer.flush(5)


def _run(tmp_path, database, group: str, primary: OnnxClassifier, shadow: OnnxClassifier | None = None):
    with open_transport("local", root=tmp_path, topic="t", group=group) as source:
        report = run_predictions([source], primary, database, batch_size=4, timeout_ms=50, shadow=shadow)
        assert source.lag() == 0  # every message acknowledged
    return report


def test_images_the_model_gives_nan_or_infinity_for_are_dead_letters_and_the_rest_are_rows(tmp_path, database_url):
    weights = non_finite_model(tmp_path / "broken.onnx")
    classifier = OnnxClassifier(tmp_path / "broken.onnx")
    images = _images()
    _publish(tmp_path, images)
    finite = [i for i in range(len(images)) if i not in BROKEN]
    want = expected_classes(weights, preprocess_images(images, classifier.spec))
    database = results_db.connect(database_url)
    try:
        reports = [_run(tmp_path, database, group, classifier) for group in ("first", "again")]
        stored = {p.message_id: (p.predicted_class, p.confidence) for p in results_db.Prediction.select()}
        dead = sorted((d.message_id, d.position, d.reason, bytes(d.payload)) for d in results_db.DeadLetter.select())
    finally:
        database.close()

    assert {key: cls for key, (cls, _) in stored.items()} == {f"m{i}": int(want[i]) for i in finite}
    assert all(math.isfinite(confidence) and 0 < confidence <= 1 for _, confidence in stored.values())
    payloads = {f"m{i}": encode_image(images[i], f"m{i}", label=i % 3).payload for i in BROKEN}
    assert dead == sorted((f"m{i}", f"t@{i + 1}", REASON, payloads[f"m{i}"]) for i in BROKEN)
    first, again = (report.to_dict() for report in reports)
    assert (first["consumed"], first["predicted"], first["dead_letters"]) == (14, 8, 6)
    assert first["per_class"] == {f"class{c}": int((want[finite] == c).sum()) for c in range(3) if c in want[finite]}
    assert first["labelled"] == 8  # the accuracy is of the rows only
    # The rerun reads every message again and stores nothing new: each is a row or a dead letter already.
    assert (again["consumed"], again["predicted"], again["already_predicted"], again["dead_letters"]) == (14, 0, 8, 6)


def test_a_shadow_model_s_nan_or_infinity_is_left_out_and_counted_and_the_primary_rows_are_stored(
        tmp_path, database_url):
    primary_weights = tiny_onnx_model(tmp_path / "primary.onnx", seed=2)
    shadow_weights = non_finite_model(tmp_path / "shadow.onnx", seed=5)
    images = _images()
    _publish(tmp_path, images)
    database = results_db.connect(database_url)
    try:
        report = _run(tmp_path, database, "first", OnnxClassifier(tmp_path / "primary.onnx"),
                      OnnxClassifier(tmp_path / "shadow.onnx"))
        predicted = results_db.Prediction.select().count()
        shadow = {s.message_id: s.confidence for s in results_db.ShadowPrediction.select()}
    finally:
        database.close()

    assert predicted == 14 and report.dead_letters == 0
    assert sorted(shadow) == sorted(f"m{i}" for i in range(14) if i not in BROKEN)
    assert all(math.isfinite(confidence) for confidence in shadow.values())
    # Batches of 4: m0-m3, m4-m7 (all four non-finite), m8-m11, m12-m13.
    summary = report.to_dict()["shadow"]
    assert (summary["scored"], summary["errors"]) == (8, 3)
    # The agreement is over the messages both models scored, each with its own row.
    pixels = preprocess_images(images, OnnxClassifier(tmp_path / "primary.onnx").spec)
    scored = [i for i in range(14) if i not in BROKEN]
    mine, theirs = expected_classes(primary_weights, pixels)[scored], expected_classes(shadow_weights, pixels)[scored]
    assert 0 < (mine == theirs).sum() < 8
    assert summary["agreement"] == float((mine == theirs).mean())
