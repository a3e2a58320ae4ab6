"""The results page's queries, thumbnails and HTTP behaviour on SQLite, through Flask's test
client (the browser tests in tests/integration/test_review_browser.py look at it as a person)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from markupsafe import escape
from PIL import Image

from tests.review_rows import SCRIPT_ID, digit_image, fill
from vectorai import db
from vectorai.errors import ConfigError
from vectorai.messages import encode_image
from vectorai.review import queries
from vectorai.review.app import ReviewSettings, create_app
from vectorai.review.images import thumbnail_png
from vectorai.review.server import check_bind


@pytest.fixture
def results(tmp_path):
    database = db.connect(db.sqlite_url(tmp_path / "results.sqlite"))
    rows = fill(database)
    yield database, rows
    database.close()


def _client(database, **settings):
    app = create_app(database, ReviewSettings(reviewer="tester", facets_ttl_s=0, **settings))
    return app.test_client()


def _csrf(client) -> str:
    return re.search(r'data-csrf="([^"]+)"', client.get("/predictions").get_data(as_text=True)).group(1)


def _ids(html: str) -> list[str]:
    return [str(escape(m)) for m in re.findall(r'data-id="([^"]*)"', html)]


def _grid(client, query: str = "") -> list[str]:
    response = client.get(f"/predictions?limit=300&{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return re.findall(r'data-id="([^"]*)"', response.get_data(as_text=True))


@pytest.mark.parametrize("query, keep", [
    ("cls=1", lambda r: r["predicted_class"] == 1),
    ("below=0.5", lambda r: r["confidence"] < 0.5),
    ("wrong=1", lambda r: r["true_label"] is not None and r["true_label"] != r["predicted_class"]),
    ("version=vectorai-test/1&true=0&cls=0", lambda r: r["true_label"] == 0 and r["predicted_class"] == 0),
    ("since=2026-12-01T12:10&until=2026-12-01T12:20", lambda r: 10 <= int(r["position"][2:]) < 20),
    ("source=elsewhere", lambda r: False),
])
def test_each_filter_keeps_exactly_the_rows_it_names(results, query, keep):
    database, rows = results
    expected = sorted(str(escape(r["message_id"])) for r in rows if keep(r))
    shown = _grid(_client(database), query)
    assert sorted(shown) == expected
    assert 0 < len(expected) < len(rows) or query == "source=elsewhere"


def test_shadow_disagreement_and_review_filters(results):
    database, rows = results
    client = _client(database)
    assert sorted(_grid(client, "shadow=1")) == sorted(str(escape(r["message_id"])) for i, r in enumerate(rows)
                                                       if i % 5 == 0)
    token = _csrf(client)
    answer = client.post("/review", data={"source": "local", "message_id": "msg-0003", "label": "2", "csrf": token},
                         headers={"X-Requested-With": "fetch"})
    assert answer.status_code == 200 and answer.json["label"] == 2
    assert "msg-0003" not in _grid(client, "unreviewed=1")
    assert len(_grid(client, "unreviewed=1")) == len(rows) - 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 70))
def test_keyset_pages_show_every_row_once_newest_first(results, limit):
    database, rows = results
    client, seen, url = _client(database), [], f"/predictions?limit={limit}"
    for _ in range(len(rows) + 1):
        html = client.get(url).get_data(as_text=True)
        seen += re.findall(r'data-row="(\d+)"', html)
        following = re.search(r'href="([^"]+)" id="next-page"', html)
        if not following:
            break
        url = following.group(1).replace("&amp;", "&")
    assert [int(i) for i in seen] == list(range(len(rows), 0, -1))


def test_a_later_review_replaces_the_earlier_one(results):
    database, _ = results
    client = _client(database)
    token = _csrf(client)
    for label in ("1", "2"):
        client.post("/review", data={"source": "local", "message_id": "msg-0001", "label": label, "csrf": token})
    stored = list(db.Review.select().dicts())
    assert [(r["message_id"], r["label"], r["reviewer"]) for r in stored] == [("msg-0001", 2, "tester")]


def test_bad_posts_are_refused_with_one_clear_line(results):
    database, _ = results
    client = _client(database)
    token = _csrf(client)
    fetch = {"X-Requested-With": "fetch"}
    no_token = client.post("/review", data={"source": "local", "message_id": "msg-0001", "label": "1"}, headers=fetch)
    assert no_token.status_code == 400 and "CSRF" in no_token.json["error"]
    unknown = client.post("/review", data={"source": "local", "message_id": "nope", "label": "1", "csrf": token},
                          headers=fetch)
    assert unknown.status_code == 400 and "'nope'" in unknown.json["error"]
    not_a_class = client.post("/review", data={"source": "local", "message_id": "msg-0001", "label": "9",
                                               "csrf": token}, headers=fetch)
    assert not_a_class.status_code == 400 and "label 9" in not_a_class.json["error"]
    bad_filter = client.get("/predictions?below=lots")
    assert bad_filter.status_code == 400 and "below" in bad_filter.get_data(as_text=True)
    assert db.Review.select().count() == 0


def test_a_token_is_asked_once_and_kept_in_a_cookie(results):
    database, _ = results
    client = _client(database, token="s3cret")
    first = client.get("/predictions")
    assert first.status_code == 302 and "/login" in first.headers["Location"]
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"token": "wrong", "csrf": token, "next": "/"}).status_code == 403
    assert client.post("/login", data={"token": "s3cret", "csrf": token, "next": "//evil.example/"}
                       ).headers["Location"] == "/"
    assert client.get("/predictions").status_code == 200


def test_binding_beyond_loopback_needs_a_token_and_tls_or_insecure_http():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="0.0.0.0.*VECTORAI_REVIEW_TOKEN.*--token-file"):
        check_bind("0.0.0.0", None, tls=True)
    with pytest.raises(ConfigError, match="0.0.0.0.*--certfile.*--keyfile.*--insecure-http"):
        check_bind("0.0.0.0", "tok")
    check_bind("0.0.0.0", "tok", tls=True)
    check_bind("0.0.0.0", "tok", insecure_http=True)


@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw"])
def test_thumbnails_are_fresh_pngs_of_the_stored_image(encoding):
    image = digit_image(4)
    message = encode_image(image, "x", encoding=encoding)
    data = thumbnail_png(message.payload, {"content-type": message.attributes["content-type"]})
    decoded = np.asarray(Image.open(io.BytesIO(data), formats=["PNG"]))
    assert decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).max() <= (40 if encoding == "jpeg" else 0)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), content_type=st.sampled_from(
    ["image/png", "image/jpeg", "application/x-ndarray; dtype=uint8; shape=4,4", "text/html", "image/svg+xml", ""]))
def test_any_payload_gives_a_png_or_nothing(payload, content_type):
    data = thumbnail_png(payload, {"content-type": content_type})
    if data is not None:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        Image.open(io.BytesIO(data), formats=["PNG"]).load()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message_id=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                          min_size=1, max_size=40))
def test_any_id_is_shown_escaped(tmp_path_factory, message_id):
    database = db.connect(db.sqlite_url(tmp_path_factory.mktemp("ids") / "r.sqlite"))
    try:
        row = {"source": "local", "message_id": message_id, "position": "0", "image": encode_image(digit_image(1), "x")
               .payload, "content_type": "image/png", "predicted_class": 0, "predicted_name": "class0",
               "confidence": 0.5, "true_label": None, "model_version": "m/1", "produced_at": None,
               "predicted_at": db.utc_now()}
        db.write_results(database, [row], [])
        html = _client(database).get("/predictions").get_data(as_text=True)
    finally:
        database.close()
    assert f'<span class="message-id">{escape(message_id)}</span>' in html


def test_pages_show_runs_confusion_and_dead_letters(results, tmp_path):
    database, _ = results
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "predict-local-adhoc-abc.json").write_text(
        '{"consumed": 60, "predicted": 60, "dead_letters": 3, "images_per_second": 1234.5, "accuracy": 0.75, '
        '"model_version": "vectorai-test/1", "run_at": "adhoc", "sources": ["local"], '
        '"shadow": {"model_version": "vectorai-test/2", "agreement": 0.8}}')
    client = _client(database, reports_dir=reports, mlflow_url="http://mlflow:5000", luigid_url="http://luigid:8082")
    runs = client.get("/").get_data(as_text=True)
    assert "1234.5" in runs and "75.0 %" in runs and "80.0 %" in runs
    assert 'href="http://mlflow:5000/#/models/vectorai-test/versions/1"' in runs
    assert "http://luigid:8082/static/visualiser/index.html#search__search=adhoc" in runs
    assert runs.count("<svg") == 2  # class mix and confidence, one model version
    confusion = client.get("/confusion?version=vectorai-test/1").get_data(as_text=True)
    assert 'href="/predictions?version=vectorai-test/1&amp;true=1&amp;cls=0"' in confusion
    letters = client.get("/dead-letters").get_data(as_text=True)
    assert "label &#39;seven&#39; is not an integer" in letters and "cannot decode image" in letters
    assert SCRIPT_ID not in letters and str(escape(SCRIPT_ID)) in letters
    assert letters.count('src="/image/dead-letter/') == 1  # only the payload that still decodes
    only = client.get("/dead-letters?kind=unknown content-type").get_data(as_text=True)
    assert "unknown content-type" in only and "seven" not in only


def test_the_runs_page_shows_each_run_s_drift_flag_score_and_estimated_against_measured_accuracy(results, tmp_path):
    database, _ = results
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "predict-local-turned-abc.json").write_text(
        '{"consumed": 200, "predicted": 200, "accuracy": 0.14, "run_at": "turned", "sources": ["local"], '
        '"model_version": "m/1", '
        '"drift": {"score": 0.66, "p_value": 8e-82, "drifted": true, "estimated_accuracy": 0.7965, '
        '"measured_accuracy": 0.14, "window": 1000, "tested_windows": 1, "drifted_windows": 1, '
        '"note": "drift flagged: unreliable"}}')
    (reports / "predict-local-upright-abc.json").write_text(
        '{"consumed": 200, "predicted": 200, "accuracy": null, "run_at": "upright", "sources": ["local"], '
        '"model_version": "m/1", '
        '"drift": {"score": 0.09, "p_value": 0.98, "drifted": false, "estimated_accuracy": 0.9816, '
        '"measured_accuracy": null, "window": 1000, "tested_windows": 1, "drifted_windows": 0}}')
    runs = _client(database, reports_dir=reports).get("/").get_data(as_text=True)
    turned = runs[runs.index(">turned<"):runs.index("</tr>", runs.index(">turned<"))]
    upright = runs[runs.index(">upright<"):runs.index("</tr>", runs.index(">upright<"))]
    assert 'class="drifted"' in turned and "(score 0.66)" in turned and "79.7 %" in turned and "14.0 %" in turned
    assert 'class="unreliable"' in turned
    assert "no drift" in upright and "(score 0.09)" in upright and "98.2 %" in upright and "n/a" in upright


def test_responses_forbid_inline_script():
    database = db.connect("sqlite:///:memory:")
    try:
        policy = _client(database).get("/").headers["Content-Security-Policy"]
    finally:
        database.close()
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_reason_kinds_group_reasons_without_their_specifics():
    assert queries.reason_kind("payload of 9 bytes exceeds the limit of 8") == "payload of"
    assert queries.reason_kind("unknown content-type 'x/y'; expected") == "unknown content-type"
    assert queries.reason_kind("cannot decode image: broken") == "cannot decode image"


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("VECTORAI_REVIEW_TOKEN", "DATABASE_URL")}
    proc = subprocess.run([str(Path(sys.executable).parent / "vectorai-results"), "serve", "--host", "0.0.0.0",
                           "--database-url", db.sqlite_url(tmp_path / "r.sqlite")],
                          capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "vectorai-results: setting serve --host: '0.0.0.0' is reachable from other machines; set "
        "VECTORAI_REVIEW_TOKEN or give --token-file so that the page asks for a token"]
