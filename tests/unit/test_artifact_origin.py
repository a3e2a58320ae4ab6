"""The MLflow store's credentials go only to the tracking server's origin (scheme, host, port):
which artifact locations a download may read with them, and which it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.errors import RegistryError
from vectorai.registry.origin import check_credentials_stay_home, http_origin

STORE = "http://mlflow.internal:5000"

_HOSTS = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z]{1,5}){0,2}", fullmatch=True)
_PORTS = st.one_of(st.none(), st.integers(1, 65535))
_USERINFO = st.sampled_from(["", "alice@", "alice:s3cret@", ":pw@"])


def url(scheme: str, host: str, port: int | None, userinfo: str = "", path: str = "/x") -> str:
    return f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{path}"


def allowed(location: str, store: str = STORE) -> bool:
    try:
        check_credentials_stay_home("models:/m/1", location, store)
    except RegistryError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["http", "https"]), host=_HOSTS, port=_PORTS, userinfo=_USERINFO,
       other_scheme=st.sampled_from(["http", "https"]), other_host=_HOSTS, other_port=_PORTS,
       upper=st.booleans())
def test_credentials_go_exactly_to_the_same_scheme_host_and_port(scheme, host, port, userinfo, other_scheme,
                                                                  other_host, other_port, upper):
    store = url(scheme, host, port, path="")
    location = url(other_scheme, other_host.upper() if upper else other_host, other_port, userinfo)
    default = {"http": 80, "https": 443}
    same = (scheme, host, port or default[scheme]) == (other_scheme, other_host, other_port or default[other_scheme])
    assert allowed(location, store) == same


@pytest.mark.parametrize("location,ok", [
    ("http://mlflow.internal:5000/api/2.0/mlflow-artifacts/artifacts/1/model", True),
    ("HTTP://MLflow.Internal:5000/x", True),
    ("http://mlflow.internal/x", False),  # port 80, not 5000
    ("https://mlflow.internal:5000/x", False),
    ("http://attacker.example:5000/x", False),
    ("http://mlflow.internal:5000.attacker.example/x", False),  # not a port: never the server
    ("http://mlflow.internal:5000\\@attacker.example/x", False),  # clients disagree on the host
    ("mlflow-artifacts:/1/abc/artifacts/model", True),  # resolved against the server itself
    ("mlflow-artifacts://mlflow.internal:5000/1/model", True),
    ("mlflow-artifacts://attacker.example:5000/1/model", False),
    ("s3://bucket/model", True),  # S3's own credentials, never the tracking server's
    ("file:///srv/mlflow/artifacts/1/model", True),
])
def test_artifact_locations(location, ok):
    assert allowed(location) == ok


def test_a_store_that_is_no_http_server_lends_credentials_to_no_host():
    assert not allowed("http://127.0.0.1:5000/model", "sqlite:////data/mlflow.db")
    assert allowed("file:///data/mlflow/artifacts/model", "sqlite:////data/mlflow.db")


def test_the_refusal_names_the_version_and_the_foreign_origin_and_masks_the_store_s_password():
    with pytest.raises(RegistryError) as err:
        check_credentials_stay_home("models:/m/3", "http://bob:pw@attacker.example/m",
                                    "http://alice:s3cret@mlflow:5000")
    message = str(err.value)
    assert message.startswith("model models:/m/3: its files are on http://attacker.example:80, another host than "
                              "the MLflow store http://alice:***@mlflow:5000"), message
    assert "s3cret" not in message and "pw" not in message.replace("password", "")


def test_an_origin_leaves_out_user_and_password():
    assert http_origin("https://alice:pw@Example.org/x") == ("https", "example.org", 443)
