"""Pytest plugin: a session-wide Pub/Sub emulator (``-p tests.fixtures_pubsub``).

Uses ``PUBSUB_EMULATOR_HOST`` when it is set, else starts Google's emulator with
``services/pubsub.py`` and stops it after the session. When no emulator can be had the tests fail
on CI (``CI=true``) and are skipped with the reason elsewhere, never silently.
"""

from __future__ import annotations

import os
import uuid

import pytest

TEST_PROJECT = "vectorai-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pubsub: needs a Pub/Sub emulator (tests.fixtures_pubsub)")


@pytest.fixture(scope="session")
def pubsub_emulator():
    """``host:port`` of a running Pub/Sub emulator."""
    existing = os.environ.get("PUBSUB_EMULATOR_HOST")
    if existing:
        yield existing
        return
    from services import pubsub as service
    from services.common import ServiceError

    started_here = service.host() is None  # leave an emulator someone else started running
    try:
        host = service.start()
    except ServiceError as err:
        reason = f"Pub/Sub emulator unavailable: {err}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield host
    finally:
        if started_here:
            service.stop()


@pytest.fixture
def pubsub_settings(pubsub_emulator) -> dict:
    """Transport settings with a topic and subscription no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    return {"project": TEST_PROJECT, "topic": f"topic-{suffix}", "subscription": f"sub-{suffix}",
            "emulator_host": pubsub_emulator, "connect_timeout_s": 10.0}
