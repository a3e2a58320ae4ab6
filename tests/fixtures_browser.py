"""Pytest plugin: a headless system Chromium driven by Playwright, and the results page served
in a thread of the test process.

Chromium is installed with apt when missing (``services.chromium``); when it cannot be had the
tests fail on CI (``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    from services.chromium import install
    from services.common import ServiceError

    try:
        return str(install())
    except ServiceError as err:
        _unavailable(f"chromium unavailable: {err}")


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        _unavailable(f"playwright is not installed: {err}")
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root in CI containers, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, tmp_path):
    """A fresh browser context's page; a script error on the page fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.screenshots = Path(os.environ.get("REVIEW_SCREENSHOTS", tmp_path / "screenshots"))
    page.screenshots.mkdir(parents=True, exist_ok=True)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def serve_in_thread(database, settings, host: str = "127.0.0.1", **tls) -> Iterator[str]:
    """Serve the page for ``database`` with the real server (``vectorai.review.server``) on a free
    port of ``host``, in a thread; yields its base URL. ``tls``: ``certfile=`` and ``keyfile=``."""
    from vectorai.review.server import ReviewServer

    server = ReviewServer(database, settings, host, 0, **tls)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.stop()
        thread.join(10)
