"""URL masking: every form of password Peewee and MLflow accept is hidden, for any password."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from vectorai.db import mask_url as db_mask_url
from vectorai.redact import MASK, mask_error, mask_text, mask_url, url_secrets


@pytest.mark.parametrize("url,expected", [
    ("postgresql://app:hunter2@db:5432/predictions", "postgresql://app:***@db:5432/predictions"),
    ("postgresql://:hunter2@db/predictions", "postgresql://:***@db/predictions"),
    ("postgresql://app:hun@ter:2@db/predictions", "postgresql://app:***@db/predictions"),
    ("postgresql://app:hun%40ter2@db/predictions", "postgresql://app:***@db/predictions"),
    ("postgresql://app:hun/ter2@db/predictions", "postgresql://app:***@db/predictions"),
    ("postgresql://app@db/predictions?password=hunter2&sslmode=require",
     "postgresql://app@db/predictions?password=***&sslmode=require"),
    ("postgres+pool://app@db/predictions?sslmode=require&sslpassword=hunter2",
     "postgres+pool://app@db/predictions?sslmode=require&sslpassword=***"),
    ("mysql://app@db/predictions?passwd=hunter2", "mysql://app@db/predictions?passwd=***"),
    ("postgresql://app@db/predictions?pass%77ord=hunter2", "postgresql://app@db/predictions?pass%77ord=***"),
    ("http://alice:hunter2@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("https://mlflow.internal/?token=hunter2", "https://mlflow.internal/?token=***"),
    # No password: unchanged.
    ("postgresql://app@db:5432/predictions", "postgresql://app@db:5432/predictions"),
    ("sqlite:////srv/data/predictions.sqlite", "sqlite:////srv/data/predictions.sqlite"),
    ("postgresql://db/predictions?application_name=a@b", "postgresql://db/predictions?application_name=a@b"),
    # An '@' after the host as well: the host is hidden with the password, never the reverse.
    ("postgresql://app:hunter2@db/predictions?application_name=a@b", "postgresql://app:***@b"),
    ("", ""),
    ("not a url", "not a url"),
])
def test_mask_url_hides_each_form(url, expected):
    assert mask_url(url) == expected
    assert "hunter2" not in mask_url(url)
    assert db_mask_url(url) == expected  # the name the rest of the code imports


def test_error_text_that_echoes_the_url_or_the_password_is_masked():
    url = "postgresql://app:hun@ter2@db/predictions?sslpassword=s3cret"
    text = (f'"{url}" has no database name; password authentication failed (password="hun@ter2"), '
            "sslpassword=s3cret, hun%40ter2")
    masked = mask_error(text, url)
    for secret in ("hun@ter2", "hun%40ter2", "s3cret", "ter2"):
        assert secret not in masked, masked
    assert "has no database name" in masked  # the rest of the message survives
    assert mask_text("password=hunter2 host=db") == f"password={MASK} host=db"


_PASSWORD = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and s)
_SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)

_FORMS = {
    "user": lambda user, pw: f"postgresql://{user}:{pw}@db.example:5432/predictions",
    "empty user": lambda user, pw: f"postgresql://:{pw}@db.example/predictions",
    "query": lambda user, pw: f"postgresql://{user}@db.example/predictions?sslmode=require&password={quote(pw, safe='')}",
    "sslpassword": lambda user, pw: f"postgres://{user}@db.example/p?sslpassword={quote(pw, safe='')}",
    "http": lambda user, pw: f"https://{user}:{pw}@mlflow.example/",
}


@settings(max_examples=300, deadline=None)
@given(form=st.sampled_from(sorted(_FORMS)), user=_SAFE, password=_PASSWORD)
@example(form="user", user="app", password="p@ss:w/rd?#")
@example(form="empty user", user="app", password="@@::@@")
@example(form="query", user="app", password="a&password=b")
def test_no_password_survives_masking(form, user, password):
    build = _FORMS[form]
    # A password that is also part of the URL's fixed text (the host, '***'...) cannot be told apart.
    assume(password not in mask_url(build(user, MASK)) and password not in user)
    url = build(user, password)
    masked = mask_url(url)
    assert password not in masked and quote(password, safe="") not in masked
    # An error that quotes the URL and the password is clean too.
    text = mask_error(f"cannot connect to {url}: bad password {password!s} for {user}", url)
    assert password not in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_masking_never_raises(text):
    assert isinstance(mask_url(text), str)
    assert isinstance(mask_text(text, [text[:3]]), str)
    assert isinstance(url_secrets(text), list)
