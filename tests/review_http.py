"""A small HTTP client for the results page's server tests: it sends a path exactly as given
(no re-quoting), any Host header, from a chosen loopback source address, over TLS trusting one
certificate, and keeps the session cookie as a browser would."""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit


@dataclass
class Answer:
    status: int
    headers: http.message.Message
    body: str


class PageClient:
    def __init__(self, base: str, source: str | None = None, cafile: Path | None = None) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.tls = parts.hostname, parts.port, parts.scheme == "https"
        self.source = (source, 0) if source else None
        self.context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        self.cookies: dict[str, str] = {}
        self.connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connection is None:
            if self.tls:
                self.connection = http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.context,
                                                              source_address=self.source)
            else:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30,
                                                             source_address=self.source)
        return self.connection

    def request(self, method: str, path: str, form: dict | None = None, host: str | None = None,
                headers: dict | None = None) -> Answer:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        connection = self._connect()
        try:
            connection.putrequest(method, path, skip_host=host is not None)
            if host is not None:
                connection.putheader("Host", host)
            for key, value in {**sent, "Content-Length": str(len(body or b""))}.items():
                connection.putheader(key, value)
            connection.endheaders(body)
            response = connection.getresponse()
            text = response.read().decode("utf-8", "replace")
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";")[0]
        if response.headers.get("Connection", "").lower() == "close":
            self.close()
        return Answer(response.status, response.headers, text)

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: dict, **kwargs) -> Answer:
        return self.request("POST", path, form=form, **kwargs)

    def csrf(self, path: str = "/login") -> str:
        """The session's CSRF token, from a page's form or body (and the session cookie with it)."""
        page = self.get(path).body
        return re.search(r'(?:name="csrf" value|data-csrf)="([^"]+)"', page).group(1)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def start_serve(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """``vectorai-results serve ARGS`` as a process; its base URL from the line it prints."""
    exe = Path(sys.executable).parent / "vectorai-results"
    proc = subprocess.Popen([str(exe), "serve", "--port", "0", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if "serving " not in line:
        proc.kill()
        raise AssertionError(f"vectorai-results serve did not start: {line}{proc.stdout.read()}")
    return proc, line.split("serving ")[1].split("/ ")[0]
