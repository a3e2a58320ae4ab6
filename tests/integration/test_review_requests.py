"""No request gives the results page a 5xx: random query strings, path values and form fields
for every route, over HTTP to the real server, on SQLite and PostgreSQL databases with rows
written by the pipeline's writer. A value no column can hold is a 400 that names it."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tests.fixtures_browser import serve_in_thread
from tests.review_http import PageClient
from tests.review_rows import fill
from vectorai import db
from vectorai.review.app import ReviewSettings

#: Every parameter a route reads, and a few it does not.
NAMES = ("after", "cls", "true", "below", "wrong", "shadow", "unreviewed", "source", "version", "since", "until",
         "limit", "kind", "next", "token", "csrf", "label", "message_id")
EDGES = ("", "0", "-1", "1", "300", "301", "2147483647", "2147483648", "9223372036854775807", "9223372036854775808",
         "99999999999999999999", "-9223372036854775809", "1e309", "nan", "-inf", "0.5", "1", "\x00", "%", "_", "*",
         "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01", "2026-12-01T12:10",
         "//evil.example/", "/\t/evil.example/", "/\n", "msg-0001", "local", "vectorai-test/1", "payload of",
         "fuzz-token")
GET_ROUTES = ("/", "/predictions", "/confusion", "/dead-letters", "/login", "/static/review.css")
IMAGE_ROUTES = ("/image/prediction/{}.png", "/image/dead-letter/{}.png")


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
_times = st.builds(lambda t, m: t.isoformat() + _offset(m), st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31)),
                   st.integers(-23 * 60 - 59, 23 * 60 + 59))
_values = st.one_of(st.sampled_from(EDGES), st.integers(-2**80, 2**80).map(str), st.floats().map(repr), _times, _text)
#: A query string's pieces: most percent-encoded text, some raw bytes (not UTF-8) and broken escapes.
_encoded = st.one_of(_values.map(lambda v: quote(v, safe="")), st.binary(max_size=12).map(lambda b: quote(b, safe="")),
                     st.sampled_from(["%", "%zz", "%ff", "%00", "+", "&&", "=", ";"]))
_names = st.one_of(st.sampled_from(NAMES), _text.map(lambda v: quote(v, safe="")))
_query = st.lists(st.tuples(_names, _encoded), max_size=6).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
_path_value = st.one_of(st.integers(-2**80, 2**80).map(str), _text.map(lambda v: quote(v, safe="")))
_form = st.dictionaries(st.sampled_from(NAMES), _values, max_size=6)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_database")
    else:
        url = db.sqlite_url(tmp_path / "results.sqlite")
    database = db.connect(url)
    fill(database)
    yield from serve_in_thread(database, ReviewSettings(reviewer="fuzz", facets_ttl_s=0))
    database.close()


def _no_server_error(client: PageClient, method: str, path: str, form: dict | None = None) -> None:
    answer = client.request(method, path, form=form)
    assert answer.status < 500, f"{method} {path} {form or ''} -> {answer.status}: {answer.body[:300]}"


_fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("route", GET_ROUTES)
@_fuzz
@given(query=_query)
@example(query="after=99999999999999999999")
@example(query="since=0001-01-01T00%3A00%3A00%2B01%3A00")
@example(query="next=/%0A/evil.example/")
def test_no_query_string_gives_a_server_error(site, route, query):
    _no_server_error(PageClient(site), "GET", f"{route}?{query}")


@pytest.mark.parametrize("route", IMAGE_ROUTES)
@_fuzz
@given(value=_path_value, query=_query)
@example(value="99999999999999999999", query="")
def test_no_image_path_gives_a_server_error(site, route, value, query):
    _no_server_error(PageClient(site), "GET", route.format(value) + (f"?{query}" if query else ""))


@_fuzz
@given(host=st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=40))
@example(host="[::1")
@example(host="attacker.example:8090")
def test_no_host_header_gives_a_server_error(site, host):
    answer = PageClient(site).get("/predictions", host=host)
    assert answer.status in (200, 400), f"Host {host!r} -> {answer.status}: {answer.body[:300]}"


@pytest.mark.parametrize("route", ["/review", "/login"])
@_fuzz
@given(form=_form)
@example(form={"source": "local", "message_id": "msg-0001", "label": "99999999999999999999"})
@example(form={"source": "local\x00", "message_id": "msg-0001", "label": "1"})
@example(form={"token": "x", "next": "/\n/evil.example/"})
def test_no_form_gives_a_server_error(site, route, form):
    client = PageClient(site)
    _no_server_error(client, "POST", route, {**form, "csrf": client.csrf("/login")})


@pytest.fixture
def token_site(tmp_path):
    database = db.connect(db.sqlite_url(tmp_path / "results.sqlite"))
    fill(database)
    yield from serve_in_thread(database, ReviewSettings(reviewer="fuzz", token="fuzz-token", login_attempts=10**6))
    database.close()


@_fuzz
@given(form=_form)
@example(form={"token": "fuzz-token", "next": "/\n/evil.example/"})
def test_no_login_gives_a_server_error(token_site, form):
    """Where the token is right, a login redirects: to wherever ``next`` says, if it is on this site."""
    client = PageClient(token_site)
    _no_server_error(client, "POST", "/login", {**form, "csrf": client.csrf("/login")})


@pytest.mark.parametrize("query, named", [
    ("/predictions?after=99999999999999999999", "filter after '99999999999999999999': is out of range"),
    ("/dead-letters?after=-1", "filter after '-1': is out of range"),
    ("/predictions?cls=2147483648", "filter cls '2147483648': is out of range"),
    ("/predictions?limit=301", "filter limit '301': is out of range (1 to 300)"),
    ("/predictions?below=nan", "filter below 'nan': is out of range"),
    ("/predictions?since=0001-01-01T00%3A00%3A00%2B01%3A00", "filter since '0001-01-01T00:00:00+01:00': is out of"),
    ("/predictions?source=a%00b", "filter source 'a\\x00b': holds a NUL character"),
])
def test_a_value_out_of_range_is_a_400_naming_it(site, query, named):
    answer = PageClient(site).get(query)
    assert answer.status == 400 and named in answer.body.replace("&#39;", "'"), answer.body


def test_an_image_id_past_64_bits_is_not_found(site):
    client = PageClient(site)
    assert client.get("/image/prediction/99999999999999999999.png").status == 404
    assert client.get("/image/dead-letter/9223372036854775808.png").status == 404
    assert client.get("/image/prediction/1.png").status == 200
