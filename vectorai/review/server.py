"""Run the results page: ``serve(...)`` binds, prints its address and serves until stopped."""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
import sys

from vectorai.errors import ConfigError
from vectorai.review.app import ReviewSettings, create_app

TOKEN_ENV = "VECTORAI_REVIEW_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only ever means this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: anyone who reaches the port could
    otherwise read every stored image and rewrite the labels."""
    if not is_loopback(host) and not token:
        raise ConfigError("serve --host", f"{host!r} is reachable from other machines; give --token or set "
                          f"{TOKEN_ENV} so that the page asks for it")


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def serve(db, settings: ReviewSettings, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve the page for ``db`` on ``host:port`` until interrupted."""
    from werkzeug.serving import make_server

    check_bind(host, settings.token)
    try:
        server = make_server(host, port, create_app(db, settings), threaded=True)
    except (OSError, socket.gaierror) as err:
        raise ConfigError("serve --host/--port", f"cannot listen on {host}:{port}: {err}") from None
    shown = f"[{host}]" if ":" in host else host
    print(f"vectorai-results: serving http://{shown}:{server.server_port}/ (reviewer {settings.reviewer}); "
          f"Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()
