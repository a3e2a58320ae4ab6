"""Servers of one's own, for a test session or a benchmark run.

``start_private("kafka" | "postgres" | "pubsub")`` creates the server in a fresh work dir under
the system temp dir, starts it and returns it (its ``address``); ``remove()`` stops it and deletes
its data. No ``python -m services down`` in another shell knows of it, so none can stop it
mid-run. The work dir is not in the checkout: run as root, PostgreSQL runs as its own user, which
cannot enter a checkout in a 0700 home.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from services.common import Server

NAMES = ("kafka", "postgres", "pubsub")


def create(name: str, workdir: Path) -> Server:
    """A server of the named kind in ``workdir``, made ready to start (not started)."""
    if name == "kafka":
        from services.kafka import KafkaBroker

        return KafkaBroker.create(workdir)
    if name == "postgres":
        from services.postgres import PostgresCluster

        return PostgresCluster.create(workdir)
    if name == "pubsub":
        from services.pubsub import PrivateEmulator

        return PrivateEmulator.create(workdir)
    raise ValueError(f"no private {name!r} server; choose from {', '.join(NAMES)}")


def start_private(name: str, prefix: str = "vectorai-") -> Server:
    """Create and start a server of its own in a new ``{prefix}{name}-*`` temp dir. When it
    cannot be had, nothing is left behind and the error (a ServiceError, as a rule) is raised."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}{name}-"))
    server = None
    try:
        server = create(name, workdir)
        server.start()
    except BaseException:
        if server is not None:
            server.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return server
