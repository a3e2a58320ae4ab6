"""The results page's settings, and the page sizes its grid offers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The grid's page sizes a person can choose; the largest is also the most a request can ask for.
PAGE_SIZES = (30, 60, 120, 300)


@dataclass(frozen=True)
class ReviewSettings:
    """What the page needs besides the database."""

    reviewer: str
    #: Asked for once per browser when set; required when the server listens beyond loopback.
    token: str | None = None
    reports_dir: Path | None = None
    luigid_url: str | None = None
    mlflow_url: str | None = None
    page_size: int = 60
    facets_ttl_s: float = 60.0
