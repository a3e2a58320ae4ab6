"""Pytest plugin: a session-wide Pub/Sub emulator (``-p tests.fixtures_pubsub``).

Uses ``PUBSUB_EMULATOR_HOST`` when it is set, else starts Google's emulator in a temp dir of its
own (``services.private``) and stops it after the session. When no emulator can be had the tests fail
on CI (``CI=true``) and are skipped with the reason elsewhere, never silently.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from tests.fixtures_services import start_own

TEST_PROJECT = "vectorai-test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pubsub: needs a Pub/Sub emulator (tests.fixtures_pubsub)")


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[str]:
    """``host:port`` of a running Pub/Sub emulator: one of this session's own (of this worker's,
    under pytest-xdist), so no other session's end can stop it mid-run."""
    existing = os.environ.get("PUBSUB_EMULATOR_HOST")
    if existing:
        yield existing
        return
    for control in start_own("pubsub"):
        yield control.address


@pytest.fixture
def pubsub_settings(pubsub_emulator) -> dict:
    """Transport settings with a topic and subscription no other test uses."""
    suffix = uuid.uuid4().hex[:12]
    return {"project": TEST_PROJECT, "topic": f"topic-{suffix}", "subscription": f"sub-{suffix}",
            "emulator_host": pubsub_emulator, "connect_timeout_s": 10.0}
