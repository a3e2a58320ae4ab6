"""Shadow scoring: a second model classifies every batch beside the primary one, into
``shadow_prediction`` in the same transaction, and the report says how often the two agree."""

import dataclasses

import numpy as np
import pytest

from tests.unit.helpers import expected_classes, tiny_onnx_model
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.preprocess import preprocess_images
from vectorai.transports import open_transport
from vectorai.transports.base import OutgoingMessage


def _stream(tmp_path, images, labels):
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(im, f"m{i}", label=int(lb)) for i, (im, lb) in enumerate(zip(images, labels))]
                         + [OutgoingMessage(b"junk", {"id": "bad", "content-type": "image/png"})])
        producer.flush(5)


def test_a_shadow_model_scores_every_batch_and_the_report_gives_agreement_and_both_accuracies(tmp_path):
    primary_weights = tiny_onnx_model(tmp_path / "primary.onnx", seed=0)
    shadow_weights = tiny_onnx_model(tmp_path / "shadow.onnx", seed=1)
    primary, shadow = OnnxClassifier(tmp_path / "primary.onnx"), OnnxClassifier(tmp_path / "shadow.onnx")
    shadow.info = dataclasses.replace(shadow.info, version="tiny-v2")
    images = np.random.default_rng(2).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    pixels = preprocess_images(images, primary.spec)
    mine, theirs = expected_classes(primary_weights, pixels), expected_classes(shadow_weights, pixels)
    assert 0 < (mine == theirs).sum() < 50  # else agreement could not be told from a constant
    labels = mine.copy()
    labels[:10] = (labels[:10] + 1) % 3  # the primary is wrong on 10 of them
    _stream(tmp_path, images, labels)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], primary, database, batch_size=16, timeout_ms=50, shadow=shadow)

    stored = {r.message_id: r for r in results_db.ShadowPrediction.select()}
    assert set(stored) == {f"m{i}" for i in range(50)}  # not the dead letter
    assert all(r.model_version == "tiny-v2" for r in stored.values())
    assert [stored[f"m{i}"].predicted_class for i in range(50)] == theirs.tolist()
    assert [p.predicted_class for p in results_db.Prediction.select().order_by(results_db.Prediction.id)] == \
        mine.tolist()
    summary = report.to_dict()
    assert summary["accuracy"] == 40 / 50
    assert summary["shadow"] == {"model_version": "tiny-v2", "scored": 50,
                                 "agreement": float((mine == theirs).mean()),
                                 "accuracy": float((theirs == labels).mean()), "errors": 0}
    assert summary["by_source"]["local"]["shadow_agreement"] == summary["shadow"]["agreement"]
    # The job's Prometheus file says the same, as node_exporter would read it.
    from prometheus_client.parser import text_string_to_metric_families

    from vectorai.metrics import record_success

    text = record_success(tmp_path / "metrics", "local", report).read_text()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["vectorai_predict_last_run_shadow_agreement"] == pytest.approx(float((mine == theirs).mean()))
    assert samples["vectorai_predict_last_run_shadow_accuracy"] == pytest.approx(float((theirs == labels).mean()))
    assert samples["vectorai_predict_last_run_accuracy"] == pytest.approx(0.8)
    # A second run over the same messages stores neither model's rows twice.
    from vectorai.transports.local import LocalTransport
    import sqlite3
    with sqlite3.connect(tmp_path / "t.sqlite") as queue:
        queue.execute("DELETE FROM cursors")
    with LocalTransport(tmp_path, "t") as source:
        again = run_predictions([source], primary, database, batch_size=16, timeout_ms=50, shadow=shadow)
    assert again.already_predicted == 50 and results_db.ShadowPrediction.select().count() == 50


def test_without_a_shadow_the_report_and_tables_have_none(tmp_path):
    tiny_onnx_model(tmp_path / "primary.onnx")
    images = np.zeros((5, 8, 8), np.uint8)
    _stream(tmp_path, images, [0] * 5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database, batch_size=16,
                                 timeout_ms=50)
    assert "shadow" not in report.to_dict() and results_db.ShadowPrediction.select().count() == 0


def test_a_shadow_model_of_another_input_size_scores_the_same_images_with_its_own_preprocessing(tmp_path):
    tiny_onnx_model(tmp_path / "primary.onnx")
    wide_weights = tiny_onnx_model(tmp_path / "wide.onnx", height=16, width=16)
    images = np.random.default_rng(4).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    _stream(tmp_path, images, [0] * 12)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    wide = OnnxClassifier(tmp_path / "wide.onnx")
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database, batch_size=16,
                                 timeout_ms=50, shadow=wide)
    stored = {r.message_id: r.predicted_class for r in results_db.ShadowPrediction.select()}
    # The 8x8 images reach the 16x16 model resized by its own preprocessing, not the primary's batch.
    want = expected_classes(wide_weights, preprocess_images(images, wide.spec))
    assert stored == {f"m{i}": int(c) for i, c in enumerate(want)}
    assert report.shadow_scored == 12 and report.predicted == 12


def _failing_model(path, source) -> None:
    """``source`` with a Reshape to a batch of 7 in front: onnxruntime fails at run time on any
    batch whose size is not a multiple of 7, as a broken challenger might."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(source)
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([7, 8, 8, 1], np.int64), "batch_of_7"))
    first = graph.node[0]
    graph.node.insert(0, helper.make_node("Reshape", [first.input[0], "batch_of_7"], ["image_of_7"]))
    first.input[0] = "image_of_7"
    onnx.save(model, path)


def test_a_failing_shadow_model_is_logged_and_counted_and_the_primary_rows_are_stored_and_acknowledged(
        tmp_path, caplog):
    tiny_onnx_model(tmp_path / "primary.onnx")
    _failing_model(tmp_path / "shadow.onnx", tmp_path / "primary.onnx")
    shadow = OnnxClassifier(tmp_path / "shadow.onnx")
    shadow.info = dataclasses.replace(shadow.info, version="broken-v9")
    report = _twenty_with_a_failing_shadow(tmp_path, shadow)
    summary = report.to_dict()
    assert summary["predicted"] == 20 and summary["shadow"]["errors"] == 2  # batches of 16 and 5 (4 + junk)
    assert summary["shadow"]["scored"] == 0 and summary["by_source"]["local"]["shadow_errors"] == 2
    warnings = [r.getMessage() for r in caplog.records if "shadow model broken-v9 failed" in r.getMessage()]
    assert len(warnings) == 2 and "batch of 16 from local (t@1 .. t@16)" in warnings[0]
    from prometheus_client.parser import text_string_to_metric_families

    from vectorai.metrics import record_success

    text = record_success(tmp_path / "metrics", "local", report).read_text()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["vectorai_predict_last_run_shadow_errors"] == 2
    assert samples["vectorai_predict_last_run_messages_predicted"] == 20


def test_a_shadow_whose_own_preprocessing_fails_is_counted_and_the_primary_rows_are_stored(tmp_path, caplog):
    tiny_onnx_model(tmp_path / "primary.onnx")
    tiny_onnx_model(tmp_path / "wide.onnx", height=16, width=16)
    wide = OnnxClassifier(tmp_path / "wide.onnx")

    def broken(images):
        raise ValueError("no such filter")

    wide.preprocess = broken
    _stream(tmp_path, np.zeros((6, 8, 8), np.uint8), [0] * 6)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database, batch_size=16,
                                 timeout_ms=50, shadow=wide)
        assert source.lag() == 0
    assert results_db.Prediction.select().count() == 6 and results_db.ShadowPrediction.select().count() == 0
    assert report.shadow_errors == 1 and report.to_dict()["by_source"]["local"]["shadow_errors"] == 1
    assert any("could not preprocess a batch (ValueError: no such filter)" in r.getMessage() for r in caplog.records)


def named_classes(path, names: list[str]) -> OnnxClassifier:
    """The tiny model at ``path`` with its class names in its metadata replaced by ``names``
    (any text JSON can hold: JSON escapes a lone surrogate or NUL, as another exporter may write
    them), loaded."""
    import json

    import onnx

    from vectorai import onnx_metadata

    model = onnx.load(path)
    onnx_metadata.set_metadata(model, {onnx_metadata.CLASS_NAMES: json.dumps(names)})
    onnx.save(model, path)
    return OnnxClassifier(path)


def test_shadow_rows_sqlite_refuses_are_rolled_back_alone_and_the_primary_rows_are_stored(tmp_path, caplog):
    """SQLite stores a class name of any length, and NUL, but its driver cannot encode a lone
    surrogate: the shadow's rows of each batch are rolled back to their own savepoint, counted
    as shadow errors, and the batch is stored and acknowledged with the primary's rows."""
    tiny_onnx_model(tmp_path / "primary.onnx")
    tiny_onnx_model(tmp_path / "shadow.onnx", seed=1)
    shadow = named_classes(tmp_path / "shadow.onnx", ["lone-\udc80", "\ud800", "x" * 300 + "\udfff"])
    report = _twenty_with_a_failing_shadow(tmp_path, shadow)
    summary = report.to_dict()
    assert (summary["predicted"], summary["shadow"]["scored"], summary["shadow"]["errors"]) == (20, 0, 2)
    warnings = [r.getMessage() for r in caplog.records if "the database refused shadow model" in r.getMessage()]
    assert len(warnings) == 2 and "UnicodeEncodeError" in warnings[0], warnings


def test_a_shadow_model_that_cannot_be_loaded_is_reported_and_the_run_scores_with_the_primary_alone(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from vectorai.metrics import record_success
    from vectorai.predict import load_shadow

    tiny_onnx_model(tmp_path / "primary.onnx")
    (tmp_path / "challenger.onnx").write_bytes(b"not a model")
    shadow, unavailable = load_shadow(lambda: OnnxClassifier(tmp_path / "challenger.onnx"), "models:/m@challenger")
    assert shadow is None and unavailable.startswith("models:/m@challenger: ")
    _stream(tmp_path, np.zeros((5, 8, 8), np.uint8), [0] * 5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database, batch_size=16,
                                 timeout_ms=50, shadow=shadow, shadow_unavailable=unavailable)
    assert report.predicted == 5 and results_db.ShadowPrediction.select().count() == 0
    assert report.to_dict()["shadow"] == {"model_version": "", "scored": 0, "agreement": None, "accuracy": None,
                                          "errors": 0, "unavailable": unavailable}
    text = record_success(tmp_path / "metrics", "local", report).read_text()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["vectorai_predict_last_run_shadow_unavailable"] == 1


def _twenty_with_a_failing_shadow(tmp_path, shadow):
    """20 images and one junk message through ``primary.onnx`` with a ``shadow`` whose rows all
    fail: every primary row stored and acknowledged, one dead letter, no shadow row; the run report."""
    _stream(tmp_path, np.random.default_rng(4).integers(0, 256, (20, 8, 8), dtype=np.uint8), [0] * 20)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database, batch_size=16,
                                 timeout_ms=50, shadow=shadow)
        assert source.lag() == 0  # every batch acknowledged
    assert results_db.Prediction.select().count() == 20 and results_db.DeadLetter.select().count() == 1
    assert results_db.ShadowPrediction.select().count() == 0
    return report
