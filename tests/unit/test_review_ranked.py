"""The grid's ranked orders on real rows (SQLite): "review next" and "suspicious labels", and
the columns they rank by, stored at predict time."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from markupsafe import escape

from tests.review_rows import START, fill
from tests.unit.helpers import tiny_onnx_model
from vectorai import db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.review.app import ReviewSettings, create_app
from vectorai.review.priority import Candidate, review_order
from vectorai.transports import open_transport

#: The run report of a drifted run over the rows predicted in minutes 40-49 (rows 40-49).
DRIFTED_REPORT = {"model_version": "vectorai-test/1", "drift": {"score": 0.9, "p_value": 0.001, "drifted": True},
                  "predicted_between": [(START + dt.timedelta(minutes=40)).isoformat(),
                                        (START + dt.timedelta(minutes=49)).isoformat()]}


@pytest.fixture
def results(tmp_path):
    database = db.connect(db.sqlite_url(tmp_path / "results.sqlite"))
    rows = fill(database)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "predict-local-drifted.json").write_text(json.dumps(DRIFTED_REPORT))
    (reports / "predict-local-calm.json").write_text(json.dumps({**DRIFTED_REPORT, "drift": {"drifted": False},
                                                                 "predicted_between": [START.isoformat()] * 2}))
    client = create_app(database, ReviewSettings(reviewer="tester", facets_ttl_s=0, reports_dir=reports)).test_client()
    yield client, rows
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


def _expected_next(rows: list[dict], reviewed: set[int] = frozenset(), cls: int | None = None) -> list[str]:
    """review_order over the rows the page should rank (shadow rows disagree on every fifth row)."""
    kept = [i for i in range(len(rows)) if i not in reviewed and cls in (None, rows[i]["predicted_class"])]
    candidates = [Candidate(rows[i]["margin"], rows[i]["predicted_class"], i % 5 == 0, 40 <= i <= 49) for i in kept]
    return [str(escape(rows[kept[j]]["message_id"])) for j in review_order(candidates)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 70))
def test_review_next_pages_follow_review_order(results, limit):
    client, rows = results
    assert _pages(client, f"order=next&limit={limit}") == _expected_next(rows)


def test_review_next_puts_the_drifted_run_first_and_leaves_out_what_was_reviewed(results):
    client, rows = results
    first = _pages(client, "order=next&limit=300")[:3]
    assert {rows[40 + k]["message_id"] for k in range(10)} >= set(first)  # one per class, all from the drifted run
    token = re.search(r'data-csrf="([^"]+)"', client.get("/predictions").get_data(as_text=True)).group(1)
    for i in (3, 40):
        client.post("/review", data={"source": "local", "message_id": rows[i]["message_id"], "label": "1",
                                     "csrf": token}, headers={"X-Requested-With": "fetch"})
    assert _pages(client, "order=next&limit=300") == _expected_next(rows, {3, 40})
    assert _pages(client, "order=next&cls=2&limit=7") == _expected_next(rows, {3, 40}, cls=2)


def test_suspicious_labels_are_the_least_likely_labels_below_their_class_mean(results):
    client, rows = results
    labelled = [r for r in rows if r["true_label"] is not None]
    means = {label: np.mean([r["label_probability"] for r in labelled if r["true_label"] == label]) for label in range(3)}
    expected = sorted((r for r in labelled if r["label_probability"] < means[r["true_label"]]),
                      key=lambda r: (r["label_probability"], rows.index(r)))
    shown = _pages(client, "order=suspicious&limit=4")
    assert shown == [str(escape(r["message_id"])) for r in expected]
    assert all(r["true_label"] != r["predicted_class"] for r in expected)  # the fixture's wrong labels
    assert "p(label) 0.010" in client.get("/predictions?order=suspicious").get_data(as_text=True)


@pytest.mark.parametrize("query", ["order=oldest", "order=next&page=-1", "order=suspicious&page=99999999"])
def test_a_bad_order_or_page_is_a_clear_400(results, query):
    client, _ = results
    response = client.get(f"/predictions?{query}")
    assert response.status_code == 400


def test_predicting_stores_the_margin_and_the_labels_probability(tmp_path):
    """The rows of a real run carry what the ranked orders need: the model's top-two margin,
    and the probability it gives the message's label (labelled messages only)."""
    tiny_onnx_model(tmp_path / "tiny.onnx")
    model = OnnxClassifier(tmp_path / "tiny.onnx")
    images = np.random.default_rng(5).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(im, f"img-{i}", label=(i % 3) if i % 2 else None) for i, im in enumerate(images)])
        producer.flush(5)
    database = db.connect(db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=5, timeout_ms=100)
    probabilities = model.predict_proba(model.preprocess(list(images)))
    for row in db.Prediction.select():
        i = int(row.message_id.split("-")[1])
        top = np.sort(probabilities[i])
        assert row.margin == pytest.approx(top[-1] - top[-2], abs=1e-6)
        assert row.label_probability == (pytest.approx(probabilities[i][i % 3], abs=1e-6) if i % 2 else None)
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
        old.execute("ALTER TABLE prediction DROP COLUMN margin")
        old.execute("ALTER TABLE prediction DROP COLUMN label_probability")
    database = db.connect(db.sqlite_url(path))
    assert [(r.margin, r.label_probability) for r in db.Prediction.select()] == [(None, None)] * 6
    indexes = {index.name for index in database.get_indexes("prediction")}
    assert {"prediction_predicted_class_margin", "prediction_label_probability"} <= indexes
    database.close()
