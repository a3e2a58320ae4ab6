"""The grid's ranked orders on real rows (SQLite): "review next" and "suspicious labels", and
the columns they rank by, stored at predict time."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from markupsafe import escape

from tests.review_rows import (DRIFTED_ROWS, expected_review_next, expected_suspicious, fill,
                               write_drifted_report)
from tests.unit.helpers import tiny_onnx_model
from vectorai import db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.review.app import ReviewSettings, create_app
from vectorai.review.ranked import drifted_runs
from vectorai.transports import open_transport


@pytest.fixture
def results(tmp_path):
    database = db.connect(db.sqlite_url(tmp_path / "results.sqlite"))
    rows = fill(database)
    write_drifted_report(tmp_path / "reports")
    settings = ReviewSettings(reviewer="tester", facets_ttl_s=0, reports_dir=tmp_path / "reports")
    yield create_app(database, settings).test_client(), rows
    database.close()


def _pages(client, query: str) -> list[str]:
    """The message ids of every page of ``query``, following the next-page links."""
    url, seen = f"/predictions?{query}", []
    for _ in range(100):
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        html = response.get_data(as_text=True)
        seen += re.findall(r'data-id="([^"]*)"', html)
        following = re.search(r'href="([^"]+)" id="next-page"', html)
        if not following:
            return seen
        url = following.group(1).replace("&amp;", "&")
    raise AssertionError("more than 100 pages")


def _escaped(ids: list[str]) -> list[str]:
    return [str(escape(i)) for i in ids]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 70))
def test_review_next_pages_follow_review_order(results, limit):
    client, rows = results
    assert _pages(client, f"order=next&limit={limit}") == _escaped(expected_review_next(rows))


def test_review_next_puts_the_drifted_run_first_and_leaves_out_what_was_reviewed(results):
    client, rows = results
    first = _pages(client, "order=next&limit=300")[:3]
    assert {rows[i]["message_id"] for i in DRIFTED_ROWS} >= set(first)  # one per class, all from the drifted run
    token = re.search(r'data-csrf="([^"]+)"', client.get("/predictions").get_data(as_text=True)).group(1)
    for i in (3, 40):
        client.post("/review", data={"source": "local", "message_id": rows[i]["message_id"], "label": "1",
                                     "csrf": token}, headers={"X-Requested-With": "fetch"})
    assert _pages(client, "order=next&limit=300") == _escaped(expected_review_next(rows, {3, 40}))
    assert _pages(client, "order=next&cls=2&limit=7") == _escaped(expected_review_next(rows, {3, 40}, cls=2))


def test_suspicious_labels_are_the_least_likely_labels_below_their_class_mean(results):
    client, rows = results
    expected = expected_suspicious(rows)
    assert _pages(client, "order=suspicious&limit=4") == _escaped(expected)
    by_id = {r["message_id"]: r for r in rows}
    assert expected and all(by_id[i]["true_label"] != by_id[i]["predicted_class"] for i in expected)  # wrong labels
    assert "p(label) 0.010" in client.get("/predictions?order=suspicious").get_data(as_text=True)


@pytest.mark.parametrize("query", ["order=oldest", "order=next&page=-1", "order=suspicious&page=99999999"])
def test_a_bad_order_or_page_is_a_clear_400(results, query):
    client, _ = results
    response = client.get(f"/predictions?{query}")
    assert response.status_code == 400


def test_predicting_stores_the_margin_and_the_labels_probability(tmp_path):
    """The rows of a real run carry what the ranked orders need: the model's top-two margin,
    the probability it gives the message's label (labelled messages only), and whether the
    shadow model disagreed."""
    tiny_onnx_model(tmp_path / "tiny.onnx")
    tiny_onnx_model(tmp_path / "shadow.onnx", seed=1)
    model = OnnxClassifier(tmp_path / "tiny.onnx")
    images = np.random.default_rng(5).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(im, f"img-{i}", label=(i % 3) if i % 2 else None)
                          for i, im in enumerate(images)])
        producer.flush(5)
    database = db.connect(db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=5, timeout_ms=100,
                                 shadow=OnnxClassifier(tmp_path / "shadow.onnx"))
    probabilities = model.predict_proba(model.preprocess(list(images)))
    for row in db.Prediction.select():
        i = int(row.message_id.split("-")[1])
        top = np.sort(probabilities[i])
        assert row.margin == pytest.approx(top[-1] - top[-2], abs=1e-6)
        assert row.label_probability == (pytest.approx(probabilities[i][i % 3], abs=1e-6) if i % 2 else None)
    theirs = {row.message_id: row.predicted_class for row in db.ShadowPrediction.select()}
    flags = {row.message_id: row.shadow_disagrees == (1 if theirs[row.message_id] != row.predicted_class else None)
             for row in db.Prediction.select()}
    assert len(flags) == 12 and all(flags.values())
    assert any(row.shadow_disagrees for row in db.Prediction.select())
    stamps = [row.predicted_at for row in db.Prediction.select()]
    assert report.to_dict()["predicted_between"] == [min(stamps).isoformat(), max(stamps).isoformat()]
    database.close()


def test_a_table_from_an_earlier_version_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    database = db.connect(db.sqlite_url(path))
    fill(database, 6)
    database.close()
    with sqlite3.connect(path) as old:  # as an earlier version made it
        old.execute("DROP INDEX prediction_predicted_class_margin")
        old.execute("DROP INDEX prediction_label_probability")
        old.execute("DROP INDEX prediction_disputed_class_margin")
        old.execute("ALTER TABLE prediction DROP COLUMN shadow_disagrees")
        old.execute("ALTER TABLE prediction DROP COLUMN margin")
        old.execute("ALTER TABLE prediction DROP COLUMN label_probability")
    database = db.connect(db.sqlite_url(path))
    assert [(r.margin, r.label_probability, r.shadow_disagrees) for r in db.Prediction.select()] == [(None,) * 3] * 6
    indexes = {index.name for index in database.get_indexes("prediction")}
    assert {"prediction_predicted_class_margin", "prediction_disputed_class_margin",
            "prediction_label_probability"} <= indexes
    database.close()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=3), max_leaves=10)
stamps = st.datetimes(timezones=st.none() | st.timezones()).map(dt.datetime.isoformat) | st.text(max_size=30)


@settings(max_examples=200, deadline=None)
@given(spans=st.lists(st.tuples(stamps, stamps), max_size=4),
       other=st.lists(st.dictionaries(st.sampled_from(["drift", "predicted_between", "model_version"]), json_values),
                      max_size=4))
def test_any_run_report_is_read_as_drifted_or_not_without_failing(spans, other):
    """Run reports come from files: whatever they hold, review next reads them, as naive UTC."""
    reports = [{"drift": {"drifted": True}, "predicted_between": list(span), "model_version": "m"} for span in spans]
    runs = drifted_runs(reports + other)
    assert all(run.first.tzinfo is None and run.last.tzinfo is None for run in runs)
    readable = [span for span in spans if all(map(_utc, span))]
    assert [(run.first, run.last) for run in runs[:len(readable)]] == [tuple(map(_utc, span)) for span in readable]


def _utc(text: str) -> dt.datetime | None:
    try:
        stamp = dt.datetime.fromisoformat(text)
        return stamp.astimezone(dt.timezone.utc).replace(tzinfo=None) if stamp.tzinfo else stamp
    except (ValueError, OverflowError):
        return None
