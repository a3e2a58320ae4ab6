"""The results page's settings, and the page sizes its grid offers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vectorai.review.guard import LOOPBACK_NAMES

#: The grid's page sizes a person can choose; the largest is also the most a request can ask for.
PAGE_SIZES = (30, 60, 120, 300)


@dataclass(frozen=True)
class ReviewSettings:
    """What the page needs besides the database."""

    reviewer: str
    #: Asked for once per browser when set; required when the server listens beyond loopback.
    token: str | None = None
    #: Names a request's Host header may give (``guard.allowed_names``); an address literal is always accepted.
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    #: Served over TLS: the session cookie is then ``Secure``.
    tls: bool = False
    #: Plain HTTP beyond loopback (``--insecure-http``): every page says so in a banner.
    insecure_http: bool = False
    #: Wrong tokens one client address may give per ``login_window_s`` before it must wait.
    login_attempts: int = 5
    login_window_s: float = 60.0
    reports_dir: Path | None = None
    luigid_url: str | None = None
    mlflow_url: str | None = None
    page_size: int = 60
    facets_ttl_s: float = 60.0
