"""The transports and databases the throughput benchmark runs through, the services behind them,
and the two library calls it times on them: StreamData's publishing and PredictTask's drain."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

TRANSPORTS = ("local", "kafka", "pubsub")
DATABASES = ("sqlite", "postgres")
#: service name (services package) -> environment variable that points at an existing one
SERVICE_ENV = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "postgres": "DATABASE_URL", "pubsub": "PUBSUB_EMULATOR_HOST"}
PUBSUB_PROJECT = "vectorai-bench"


class Services:
    """Addresses of Kafka / PostgreSQL / the Pub/Sub emulator, and stopping what it started.

    An address in the environment wins. Otherwise each is a private server of this run
    (``services.private``, as the test fixtures start theirs), which ``python -m services down``
    in another shell cannot stop mid-run.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.addresses: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self._started: dict[str, Any] = {}  # name -> the server started here, whose pids we know

    def get(self, name: str) -> str | None:
        if name in self.addresses or name in self.failed:
            return self.addresses.get(name)
        value = os.environ.get(SERVICE_ENV[name], "")
        if name == "postgres" and not value.startswith(("postgres://", "postgresql://")):
            value = ""
        if not value:
            from services.common import ServiceError
            from services.private import start_private

            self.log(f"starting {name} ...")
            try:
                server = start_private(name, prefix="vectorai-bench-")
            except (ServiceError, OSError) as err:
                self.failed[name] = str(err).splitlines()[0]
                self.log(f"{name} unavailable: {self.failed[name]}")
                return None
            self._started[name] = server
            value = server.address
        self.addresses[name] = value
        return value

    def server_pids(self, name: str) -> list[int] | None:
        """The processes of a server started here: the broker's JVM; PostgreSQL's postmaster
        and everything it started (backends, checkpointer, WAL writer). None for one given by
        the environment, which may run elsewhere."""
        from services.common import children_of

        server = self._started.get(name)
        if server is None:
            return None
        if name == "postgres":
            try:  # the pid file names runuser, which started the postmaster
                postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            return [postmaster, *children_of(postmaster)]
        pid = server.process.pid()
        return [pid] if pid is not None else None

    def stop_started(self) -> None:
        for name in reversed(list(self._started)):
            self._started.pop(name).remove()
            self.log(f"stopped {name}")


def transport_settings(name: str, services: Services, workdir: Path, topic: str, group: str) -> dict[str, Any]:
    """Keyword settings for open_transport; ``group`` is the consumer group / subscription."""
    if name == "local":
        return {"root": workdir / "queues", "topic": topic, "group": group}
    if name == "kafka":
        return {"bootstrap_servers": services.get("kafka"), "topic": topic, "group": group}
    return {"project": PUBSUB_PROJECT, "topic": topic, "subscription": group,
            "emulator_host": services.get("pubsub")}


class Databases:
    """A fresh, empty results database per case: a new SQLite file, or a new PostgreSQL database
    created (and dropped at the end) on the server."""

    def __init__(self, services: Services, workdir: Path) -> None:
        self.services = services
        self.workdir = workdir
        self.created: list[tuple[str, str]] = []

    def fresh_url(self, kind: str, label: str) -> str:
        from vectorai.db import sqlite_url

        name = f"bench_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
        if kind == "sqlite":
            return sqlite_url(self.workdir / f"{name}.sqlite")
        base = self.services.get("postgres")
        self._admin(base, "CREATE DATABASE {}", name)
        self.created.append((base, name))
        return base.rsplit("/", 1)[0] + "/" + name

    def drop_created(self) -> None:
        for base, name in self.created:
            try:
                self._admin(base, "DROP DATABASE IF EXISTS {}", name)
            except Exception as err:  # noqa: BLE001 - cleanup must not hide the results
                print(f"could not drop database {name}: {err}", file=sys.stderr)
        self.created.clear()

    @staticmethod
    def _admin(url: str, statement: str, database: str) -> None:
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(url, connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL(statement).format(sql.Identifier(database)))
        finally:
            connection.close()


def available(transport: str, database: str, services: Services) -> str | None:
    """None when the case can run, else why not."""
    for name in ((transport,) if transport != "local" else ()) + (("postgres",) if database == "postgres" else ()):
        if services.get(name) is None:
            return f"{name} unavailable: {services.failed.get(name, '?')}"
    return None


def open_consumers(transport_name: str, services: Services, workdir: Path, topic: str, groups: list[str]) -> None:
    """Create each consumer's group/subscription before publishing: Pub/Sub drops messages sent to
    a topic that has no subscription yet."""
    if transport_name != "pubsub":
        return
    from vectorai.transports import open_transport

    for group in groups:
        open_transport(transport_name, **transport_settings(transport_name, services, workdir, topic, group)).close()


def process_cpu(services: Services, transport: str, database: str) -> dict[str, float]:
    """CPU seconds used so far, read from /proc in this run, by each process of a Kafka+PostgreSQL
    case: PredictTask (this process: the benchmark runs its loop in-process, all threads), the
    broker's JVM and the PostgreSQL server (postmaster, its processes, and backends that ended).
    Empty for other cases, and without the servers' part when they came from the environment."""
    from services.common import cpu_seconds

    if (transport, database) != ("kafka", "postgres"):
        return {}
    found = {"PredictTask": time.process_time()}
    for label, name, reaped in (("broker", "kafka", False), ("PostgreSQL server", "postgres", True)):
        pids = services.server_pids(name)
        if pids:
            found[label] = cpu_seconds(pids, reaped_children=reaped)
    return found


def cpu_per_thousand(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, float]:
    """Per process, the CPU seconds between ``before`` and ``after`` per 1,000 ``images``."""
    if not images:
        return {}
    return {name: round((after[name] - before[name]) * 1000 / images, 3) for name in after if name in before}


def publish(transport_name: str, settings: dict[str, Any], images: np.ndarray, labels: np.ndarray,
            encoding: str) -> float:
    """Publish every image through StreamData's function; seconds until all are confirmed."""
    from vectorai.streaming import publish_images
    from vectorai.transports import open_transport

    with open_transport(transport_name, **settings) as transport:
        started = time.perf_counter()
        publish_images(transport, images, labels, dataset="bench", encoding=encoding, timeout_s=600)
        return time.perf_counter() - started


def predict_end_to_end(transport_name: str, settings: dict[str, Any], database_url: str, model_path: Path,
                       batch_size: int, threads: int | None, timeout_ms: int, shadow_path: Path | None = None):
    """PredictTask's run(): open the model (and a shadow model), the database and the source,
    drain the stream."""
    from vectorai.db import connect
    from vectorai.inference import OnnxClassifier
    from vectorai.predict import run_predictions
    from vectorai.transports import open_transport

    classifier = OnnxClassifier(model_path, threads=threads)
    shadow = OnnxClassifier(shadow_path, threads=threads) if shadow_path else None
    database = connect(database_url)
    try:
        with open_transport(transport_name, **settings) as source:
            return run_predictions([source], classifier, database, batch_size=batch_size, timeout_ms=timeout_ms,
                                   shadow=shadow)
    finally:
        database.close()
