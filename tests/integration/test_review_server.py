"""The results page as a web service, spoken to over HTTP(S) on a free loopback port: the server
(``vectorai.review.server``) in a thread, or ``vectorai-results serve`` as a process. Host
names, the login's redirect, TLS and its cookie, the login throttle, where the token comes from."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fixtures_browser import serve_in_thread
from tests.review_http import PageClient, start_serve
from tests.review_rows import fill
from vectorai import db
from vectorai.review.app import ReviewSettings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def database(tmp_path):
    connected = db.connect(db.sqlite_url(tmp_path / "results.sqlite"))
    fill(connected)
    yield connected
    connected.close()


def _site(database, **settings):
    return serve_in_thread(database, ReviewSettings(reviewer="http-test", facets_ttl_s=0, **settings))


@pytest.fixture
def site(database):
    yield from _site(database)


@pytest.fixture
def token_site(database):
    yield from _site(database, token=TOKEN)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VECTORAI_REVIEW_TOKEN", "DATABASE_URL")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_a_host_name_the_server_was_not_bound_to_is_refused_before_any_view(site):
    client = PageClient(site)
    port = site.rsplit(":", 1)[1]
    rebound = client.get("/predictions", host=f"attacker.example:{port}")
    assert rebound.status == 400 and "--allowed-host" in rebound.body and "class0" not in rebound.body
    assert client.get("/image/prediction/1.png", host="attacker.example").status == 400
    token = client.csrf("/predictions")
    posted = client.post("/review", {"source": "local", "message_id": "msg-0001", "label": "1", "csrf": token},
                         host=f"attacker.example:{port}")
    assert posted.status == 400 and db.Review.select().count() == 0
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}", f"192.0.2.7:{port}"):
        assert client.get("/predictions", host=name).status == 200, name


def test_allowed_host_adds_a_name_on_the_command_line(database, tmp_path):
    url = db.sqlite_url(tmp_path / "results.sqlite")
    proc, base = start_serve(["--database-url", url, "--allowed-host", "review.example",
                              "--allowed-host", "Results.Example"], _env(), tmp_path)
    try:
        client = PageClient(base)
        assert client.get("/predictions", host="review.example:8443").status == 200
        assert client.get("/predictions", host="results.example").status == 200
        assert client.get("/predictions", host="attacker.example").status == 400
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("target", ["/\t/evil.example/", "//evil.example/", "/\\evil.example/", "\\\\evil.example",
                                    "https://evil.example/", "/\n/evil.example/", "/\r\nSet-Cookie: x=1",
                                    " //evil.example/", "/\u3000/evil.example/"])
def test_login_never_sends_the_browser_to_another_site(token_site, target):
    client = PageClient(token_site)
    shown = client.get(f"/login?next={quote(target, safe='')}")
    assert shown.status == 200
    csrf = client.csrf()
    answer = client.post("/login", {"token": TOKEN, "csrf": csrf, "next": target})
    assert answer.status == 302
    assert answer.headers["Location"] == "/"


def test_login_goes_back_to_the_page_asked_for(token_site):
    client = PageClient(token_site)
    first = client.get("/predictions?cls=1&limit=30")
    assert first.status == 302
    login = client.get(first.headers["Location"])
    csrf = client.csrf()
    answer = client.post("/login", {"token": TOKEN, "csrf": csrf, "next": "/predictions?cls=1&limit=30"})
    assert login.status == 200 and answer.headers["Location"] == "/predictions?cls=1&limit=30"
    assert client.get("/predictions?cls=1&limit=30").status == 200


def test_wrong_tokens_are_throttled_per_client_address(token_site):
    guesser = PageClient(token_site, source="127.0.0.2")
    csrf = guesser.csrf()
    statuses = [guesser.post("/login", {"token": f"guess-{i}", "csrf": csrf}).status for i in range(5)]
    assert statuses == [403] * 5
    throttled = guesser.post("/login", {"token": TOKEN, "csrf": csrf})
    assert throttled.status == 429 and 0 < int(throttled.headers["Retry-After"]) <= 60
    assert "Too many wrong tokens" in throttled.body
    assert guesser.get("/predictions").status == 302  # the right token did not get in

    other = PageClient(token_site, source="127.0.0.3")
    csrf = other.csrf()
    assert other.post("/login", {"token": TOKEN, "csrf": csrf}).status == 302
    assert other.get("/predictions").status == 200


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return certfile, keyfile


def test_tls_serves_https_and_the_session_cookie_is_secure(database, tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    settings = ReviewSettings(reviewer="tls-test", token=TOKEN)
    for base in serve_in_thread(database, settings, certfile=certfile, keyfile=keyfile):  # once: the server's URL
        assert base.startswith("https://127.0.0.1:")
        client = PageClient(base, cafile=certfile)
        csrf = client.csrf()
        answer = client.post("/login", {"token": TOKEN, "csrf": csrf})
        assert answer.status == 302
        cookie = answer.headers["Set-Cookie"]
        assert cookie.startswith("vectorai_review=") and "Secure" in cookie and "HttpOnly" in cookie
        assert client.get("/predictions").status == 200
        try:  # plain HTTP to the TLS port: no page (cheroot resets the connection)
            refused = PageClient(base.replace("https://", "http://")).get("/predictions")
        except (OSError, http.client.HTTPException):
            pass
        else:
            assert refused.status == 400 and "class0" not in refused.body


def test_tls_from_the_command_line(database, tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    url = db.sqlite_url(tmp_path / "results.sqlite")
    proc, base = start_serve(["--database-url", url, "--certfile", str(certfile), "--keyfile", str(keyfile)],
                             _env(), tmp_path)
    try:
        assert base.startswith("https://127.0.0.1:")
        page = PageClient(base, cafile=certfile).get("/predictions")
        assert page.status == 200 and 'id="insecure-http"' not in page.body
    finally:
        proc.terminate()
        proc.wait(10)


def _serve_fails(args: list[str], tmp_path: Path, **env: str) -> list[str]:
    exe = Path(sys.executable).parent / "vectorai-results"
    proc = subprocess.run([str(exe), "serve", "--database-url", db.sqlite_url(tmp_path / "r.sqlite"), *args],
                          capture_output=True, text=True, timeout=60, env=_env(**env), cwd=tmp_path)
    assert proc.returncode in (1, 2) and proc.stdout == ""
    return proc.stderr.strip().splitlines()


def test_beyond_loopback_plain_http_needs_insecure_http(tmp_path):
    [line] = _serve_fails(["--host", "0.0.0.0"], tmp_path, VECTORAI_REVIEW_TOKEN=TOKEN)
    assert line == ("vectorai-results: setting serve --host: '0.0.0.0' is reachable from other machines; give "
                    "--certfile and --keyfile to serve HTTPS, or --insecure-http to serve plain HTTP all the same "
                    "(behind a TLS proxy)")


def test_insecure_http_shows_a_banner_on_every_page(database, tmp_path):
    url = db.sqlite_url(tmp_path / "results.sqlite")
    proc, base = start_serve(["--database-url", url, "--insecure-http"], _env(), tmp_path)
    try:
        client = PageClient(base)
        for path in ("/", "/predictions", "/dead-letters", "/confusion"):
            page = client.get(path)
            assert page.status == 200 and 'id="insecure-http"' in page.body and "plain HTTP" in page.body, path
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_token_on_the_command_line_is_refused_in_one_line(tmp_path):
    for args in (["--token", "hunter2"], ["--token=hunter2"]):
        [line] = _serve_fails(args, tmp_path)
        assert "hunter2" not in line
        assert line == ("vectorai-results serve: --token is not accepted on the command line; set "
                        "$VECTORAI_REVIEW_TOKEN or give --token-file FILE (readable by you only)")


def test_a_token_file_open_to_others_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    [line] = _serve_fails(["--token-file", str(token_file)], tmp_path)
    assert line == (f"vectorai-results: setting token file {token_file}: is open to its group or others (mode 0644); "
                    f"chmod 600 it, as ssh asks of a private key")


@pytest.mark.parametrize("source", ["file", "environment"])
def test_the_token_from_a_file_or_the_environment_is_asked_for(database, tmp_path, source):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    args = ["--token-file", str(token_file)] if source == "file" else []
    env = _env(VECTORAI_REVIEW_TOKEN=TOKEN) if source == "environment" else _env()
    proc, base = start_serve(["--database-url", db.sqlite_url(tmp_path / "results.sqlite"), *args], env, tmp_path)
    try:
        client = PageClient(base)
        assert client.get("/predictions").status == 302
        csrf = client.csrf()
        assert client.post("/login", {"token": "wrong", "csrf": csrf}).status == 403
        assert client.post("/login", {"token": TOKEN, "csrf": csrf}).status == 302
        assert client.get("/predictions").status == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_certificate_without_its_key_or_one_that_does_not_load_is_refused(tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    [line] = _serve_fails(["--certfile", str(certfile)], tmp_path)
    assert line == "vectorai-results: setting serve --certfile/--keyfile: give both, to serve HTTPS"
    [line] = _serve_fails(["--certfile", str(keyfile), "--keyfile", str(certfile)], tmp_path)
    assert line.startswith(f"vectorai-results: setting serve --certfile/--keyfile: cannot load {keyfile} with {certfile}")
