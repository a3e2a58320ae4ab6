"""Run the results page: ``ReviewServer`` binds, ``serve(...)`` prints its address and serves
until stopped.

The server is cheroot (CherryPy's WSGI server): a thread pool made for production, pure
Python, and TLS of its own through the standard ``ssl`` module, so the page can be served to a
team without a proxy in front. (waitress has no TLS; gunicorn forks workers, which would each
need the database connection and the login throttle of their own, and runs on Unix only.)
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import socket
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from vectorai.errors import ConfigError
from vectorai.printable import printable
from vectorai.review.app import ReviewSettings, create_app
from vectorai.review.guard import allowed_names

TOKEN_ENV = "VECTORAI_REVIEW_TOKEN"
log = logging.getLogger("vectorai.review")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only ever means this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token from ``token_file`` (when given) or ``$VECTORAI_REVIEW_TOKEN``. A file that
    its group or others may read or write is refused, as ssh refuses such a private key."""
    if token_file is None:
        return environ.get(TOKEN_ENV) or None
    try:
        mode = token_file.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"token file {token_file}", f"is open to its group or others (mode "
                              f"{stat.S_IMODE(mode):04o}); chmod 600 it, as ssh asks of a private key")
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"token file {token_file}", f"cannot be read: {err}") from None
    if not token:
        raise ConfigError(f"token file {token_file}", "is empty")
    return token


def check_bind(host: str, token: str | None, tls: bool = False, insecure_http: bool = False) -> None:
    """Refuse to listen beyond loopback without a token (anyone who reaches the port could read
    every stored image and rewrite the labels), and without TLS unless ``insecure_http`` says
    plain HTTP is meant (the token and the images would cross the network in clear)."""
    if is_loopback(host):
        return
    if not token:
        raise ConfigError("serve --host", f"{host!r} is reachable from other machines; set {TOKEN_ENV} or give "
                          f"--token-file so that the page asks for a token")
    if not tls and not insecure_http:
        raise ConfigError("serve --host", f"{host!r} is reachable from other machines; give --certfile and "
                          f"--keyfile to serve HTTPS, or --insecure-http to serve plain HTTP all the same "
                          f"(behind a TLS proxy)")


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _log_server_error(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    # cheroot's own messages (a client that vanished, a failed TLS handshake), escaped here: the
    # server may run in a process that never installed vectorai.printable's log records.
    log.log(level, "%s", printable(msg), exc_info=traceback)


class ReviewServer:
    """The page for ``db`` on ``host:port`` (0: any free port), over TLS when ``certfile`` and
    ``keyfile`` are given. Listening starts in the constructor, so ``url`` names the real port."""

    def __init__(self, db, settings: ReviewSettings, host: str = "127.0.0.1", port: int = 8090,
                 certfile: Path | None = None, keyfile: Path | None = None) -> None:
        from cheroot import wsgi

        if bool(certfile) != bool(keyfile):
            raise ConfigError("serve --certfile/--keyfile", "give both, to serve HTTPS")
        settings = replace(settings, tls=certfile is not None,
                           allowed_hosts=allowed_names(host, settings.allowed_hosts))
        check_bind(host, settings.token, settings.tls, settings.insecure_http)
        self.server = wsgi.Server((host, port), create_app(db, settings), numthreads=16,
                                  server_name="vectorai-results")
        self.server.error_log = _log_server_error
        if certfile and keyfile:
            self.server.ssl_adapter = _tls_adapter(certfile, keyfile)
        try:
            self.server.prepare()
        except (OSError, socket.gaierror) as err:
            raise ConfigError("serve --host/--port", f"cannot listen on {host}:{port}: {err}") from None
        self.host, self.port = host, self.server.bind_addr[1]
        self.scheme = "https" if settings.tls else "http"

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{shown}:{self.port}"

    def serve(self) -> None:
        """Answer requests until ``stop``."""
        self.server.serve()

    def stop(self) -> None:
        self.server.stop()


def _tls_adapter(certfile: Path, keyfile: Path):
    import ssl

    from cheroot.ssl.builtin import BuiltinSSLAdapter

    try:
        adapter = BuiltinSSLAdapter(str(certfile), str(keyfile))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError("serve --certfile/--keyfile", f"cannot load {certfile} with {keyfile}: {err}") from None
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    return adapter


def serve(db, settings: ReviewSettings, host: str = "127.0.0.1", port: int = 8090,
          certfile: Path | None = None, keyfile: Path | None = None) -> None:
    """Serve the page for ``db`` on ``host:port`` until interrupted."""
    server = ReviewServer(db, settings, host, port, certfile, keyfile)
    print(f"vectorai-results: serving {server.url}/ (reviewer {settings.reviewer}); Ctrl-C stops", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sys.stdout.flush()
