"""Pytest plugin: a session-wide Kafka broker and PostgreSQL cluster (``-p tests.fixtures_services``).

``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` (``postgresql://...``) are used when set; otherwise
the session starts its own broker / cluster with ``services/`` in a temp dir of its own (so a
``python -m services up`` in another shell is left alone) and stops it afterwards. When a service
cannot be had the tests fail on CI (``CI=true``) and are skipped with the reason elsewhere.

``kafka_broker`` / ``postgres_server`` hand fault tests stop and restart controls; they skip
when the service came from the environment, since it is not ours to stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import pytest

from services.common import Server


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@dataclass
class ServiceControl:
    """The address of a session service and, when the session started it, its controls."""

    address: str
    server: Server | None = None

    @property
    def ours(self) -> bool:
        return self.server is not None

    def stop(self, graceful: bool = True) -> None:
        """Stop it (``graceful=False``: kill it like a crash); data and port are kept."""
        self._own().stop(graceful=graceful)

    def restart(self) -> str:
        """Start it again on the same data and port; returns the (unchanged) address."""
        return self._own().restart()

    def ensure_running(self) -> None:
        if self.server is not None and not self.server.running():
            self.server.start()

    def _own(self) -> Server:
        if self.server is None:
            raise RuntimeError(f"{self.address} came from the environment; it is not ours to stop")
        return self.server


def start_own(name: str) -> Iterator[ServiceControl]:
    """Start a private server of ``name`` for the session (a generator: it stops when resumed)."""
    from services.common import ServiceError
    from services.private import start_private

    try:
        server = start_private(name, prefix="vectorai-test-")
    except ServiceError as err:
        _unavailable(f"{name} unavailable: {err}")
    try:
        yield ServiceControl(server.address, server)
    finally:
        server.remove()


@pytest.fixture(scope="session")
def _kafka_service() -> Iterator[ServiceControl]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield ServiceControl(existing)
        return
    yield from start_own("kafka")


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: ServiceControl) -> str:
    """``host:port[,host:port]`` of a running Kafka broker."""
    return _kafka_service.address


@pytest.fixture
def kafka_broker(_kafka_service: ServiceControl) -> Iterator[ServiceControl]:
    """Stop/restart controls of the session's own broker; it is running again after the test."""
    if not _kafka_service.ours:
        _unavailable("KAFKA_BOOTSTRAP_SERVERS points at a broker this session may not stop")
    yield _kafka_service
    _kafka_service.ensure_running()


@pytest.fixture(scope="session")
def _postgres_service() -> Iterator[ServiceControl]:
    existing = os.environ.get("DATABASE_URL", "")
    if existing.startswith("postgresql://"):
        yield ServiceControl(existing)
        return
    yield from start_own("postgres")


@pytest.fixture(scope="session")
def postgres_url(_postgres_service: ServiceControl) -> str:
    """``postgresql://...`` URL of a running database."""
    return _postgres_service.address


@pytest.fixture
def postgres_server(_postgres_service: ServiceControl) -> Iterator[ServiceControl]:
    """Stop/restart controls of the session's own PostgreSQL; it is running again after the test."""
    if not _postgres_service.ours:
        pytest.skip("DATABASE_URL points at a database this session may not stop")
    yield _postgres_service
    _postgres_service.ensure_running()
