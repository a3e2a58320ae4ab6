"""A throwaway PostgreSQL 15 cluster on a free loopback port, run as the unprivileged ``postgres`` user.

``start()`` runs ``initdb`` (trust auth, loopback only, fsync off: the data is disposable),
starts ``postgres`` and creates the ``vectorai`` database; ``stop()`` / ``restart()`` keep the
data dir and port, so tests can take the database away mid-run and bring it back.

The module-level functions drive one default cluster recorded in ``STATE_DIR/postgresql.json``,
so ``python -m services down`` in another shell can stop it. Its work dir is not under the
checkout but a private one (0700, owned by the server's user) in the system temp dir: run as
root, the server runs as ``postgres``, which cannot enter a checkout under /root or any 0700
home; and the Unix socket's path must stay under 108 bytes, which a deep checkout would pass.
Tests that want a cluster of their own use :class:`PostgresCluster` with their own work dir.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.common import DefaultInstance, ManagedProcess, ServiceError, free_port, port_open, wait_ready

VERSION = "15"
BIN_DIR = Path(f"/usr/lib/postgresql/{VERSION}/bin")
DATABASE = "vectorai"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60.0

_SETTINGS = """
# Written by services/postgres.py: a disposable test cluster. fsync off only risks data when the
# machine crashes; commits stay synchronous, so a killed server keeps every committed row (the
# fault tests rely on that).
fsync = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
"""

_HBA = """\
# Trust, but only over the Unix socket in the cluster's own dir and loopback TCP.
local all all trust
host  all all 127.0.0.1/32 trust
"""


def install() -> Path:
    """Install the PostgreSQL server binaries with apt-get if they are missing."""
    if (BIN_DIR / "postgres").exists():
        return BIN_DIR
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(f"PostgreSQL {VERSION} is not installed ({BIN_DIR} missing); "
                           f"install the postgresql-{VERSION} package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"postgresql-{VERSION}"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ServiceError(f"PostgreSQL: {' '.join(argv)} failed:\n{output}")
    return BIN_DIR


def _run_as_user() -> str | None:
    """The server refuses to run as root, so root runs it as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ServiceError(f"PostgreSQL: running as root but there is no {SUPERUSER!r} system user "
                           f"to run the server as") from None
    return SUPERUSER


def _check_reachable(workdir: Path, user: str) -> None:
    """Fail with the reason and the fix, before initdb fails with a bare "Permission denied",
    when the server's user cannot enter and write ``workdir`` (a folder above it is private)."""
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(workdir), "-a", "-w", str(workdir)],
                           capture_output=True)
    if probe.returncode != 0:
        raise ServiceError(
            f"PostgreSQL: the server runs as {user!r}, which cannot enter and write {workdir}: a folder "
            f"above it is private to another user (e.g. /root or a 0700 home); give the cluster a work "
            f"dir outside it, e.g. one made by tempfile.mkdtemp() under {tempfile.gettempdir()}")


@dataclass
class PostgresCluster:
    """One cluster: a work dir holding data, socket and log, and the loopback port it listens on."""

    workdir: Path
    port: int

    @classmethod
    def create(cls, workdir: Path, port: int | None = None) -> "PostgresCluster":
        """``initdb`` a new cluster in ``workdir`` (does not start it)."""
        install()
        workdir.mkdir(parents=True, exist_ok=True)
        user = _run_as_user()
        if user is not None:
            shutil.chown(workdir, user)
            _check_reachable(workdir, user)
        cluster = cls(workdir=workdir, port=port or free_port())
        cluster._run(["initdb", "-D", str(cluster.data_dir), "-U", SUPERUSER, "--auth=trust",
                      "--no-sync", "--encoding=UTF8", "--locale=C"])
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS)
        (cluster.data_dir / "pg_hba.conf").write_text(_HBA)
        cluster.save()
        return cluster

    @classmethod
    def load(cls, workdir: Path) -> "PostgresCluster":
        data = json.loads((workdir / "cluster.json").read_text())
        return cls(workdir=Path(data["workdir"]), port=data["port"])

    def save(self) -> None:
        (self.workdir / "cluster.json").write_text(
            json.dumps({"workdir": str(self.workdir), "port": self.port}, indent=2))

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("postgres", self.workdir / "postgres.pid", self.workdir / "postgres.log")

    def running(self) -> bool:
        return self.process.pid() is not None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Run the server, wait until it accepts connections, create the database; return its URL."""
        if self.running():
            return self.url
        if port_open(self.port):
            raise ServiceError(f"PostgreSQL: port {self.port} is already taken by another process")
        self.process.start(
            [str(BIN_DIR / "postgres"), "-D", str(self.data_dir), "-k", str(self.workdir),
             "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=self.workdir,  # not the caller's, which the server's user may not be able to enter
            user=_run_as_user(),
        )
        wait_ready(self.process, self._accepts_connections, timeout_s,
                   f"PostgreSQL on 127.0.0.1:{self.port}")
        if not (self.workdir / "database-created").exists():
            self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, DATABASE])
            (self.workdir / "database-created").touch()
        return self.url

    def stop(self, graceful: bool = True) -> None:
        """Stop the server, keeping its data. ``graceful`` is a fast shutdown (clients are
        disconnected, no crash recovery on restart); otherwise it is killed like a crash."""
        self.process.stop(timeout_s=30.0, sig=signal.SIGINT if graceful else signal.SIGKILL)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Stop (if running) and start again on the same data dir and port.

        Right after a crash (SIGKILL) the first start can fail while the killed server's
        processes and shared memory are still being torn down; it is retried a few times."""
        self.stop()
        for _ in range(2):
            try:
                return self.start(timeout_s)
            except ServiceError:
                time.sleep(2.0)
        return self.start(timeout_s)

    def remove(self) -> None:
        """Stop the server and delete its work dir."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _accepts_connections(self) -> bool:
        result = subprocess.run(
            [str(BIN_DIR / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", SUPERUSER, "-d", "postgres", "-t", "2"],
            capture_output=True,
        )
        return result.returncode == 0

    def _run(self, argv: list[str]) -> None:
        user = _run_as_user()
        full = [str(BIN_DIR / argv[0]), *argv[1:]]
        if user is not None:
            full = ["runuser", "-u", user, "--", *full]
        result = subprocess.run(full, capture_output=True, text=True, cwd=self.workdir)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ServiceError(f"PostgreSQL: {argv[0]} failed:\n{output}")


# --- the default cluster, shared by `python -m services` commands in any shell ----------------


_DEFAULT = DefaultInstance("PostgreSQL", PostgresCluster.create, PostgresCluster.load,
                           lambda workdir: PostgresCluster(workdir, 0), workdir_parent=None)
start = _DEFAULT.start
stop = _DEFAULT.stop
restart = _DEFAULT.restart
status = _DEFAULT.status
