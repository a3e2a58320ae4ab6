"""Shared fixtures. Service fixtures (Kafka, PostgreSQL, Pub/Sub emulator) live in the plugin
modules below; each starts its service once per session unless the environment points at one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

pytest_plugins = ["tests.fixtures_services", "tests.fixtures_pubsub", "tests.fixtures_mlflow", "tests.fixtures_luigid",
                  "tests.http_files", "tests.fixtures_browser"]

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


@dataclass
class Project:
    """A throwaway pipeline home: its own luigi.cfg, data/ and models/, run through the real
    ``luigi`` command in a subprocess, exactly as a user would from a shell."""

    root: Path
    config: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    pg: str = ""  # the PostgreSQL database the results go to, once use_postgres named one

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cfg_path(self) -> Path:
        return self.root / "luigi.cfg"

    def write_config(self) -> None:
        lines = []
        for section, values in self.config.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {value}" for key, value in values.items())
            lines.append("")
        self.cfg_path.write_text("\n".join(lines))

    def set(self, section: str, **values: object) -> "Project":
        self.config.setdefault(section, {}).update({k: str(v) for k, v in values.items()})
        self.write_config()
        return self

    def command_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "PUBSUB_EMULATOR_HOST", "MLFLOW_TRACKING_URI")}
        env.update({"LUIGI_CONFIG_PATH": str(self.cfg_path), "PYTHONPATH": str(REPO),
                    "TF_CPP_MIN_LOG_LEVEL": "2", **self.env, **(extra or {})})
        return env

    def luigi(self, *args: str, local: bool = True, timeout: float = 900, check: bool = True,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "luigi", "--module", "tasks", *args]
        if local:
            argv.append("--local-scheduler")
        proc = subprocess.run(argv, cwd=self.root, env=self.command_env(extra_env), capture_output=True,
                              text=True, timeout=timeout)
        if check and (proc.returncode != 0 or ":)" not in proc.stdout + proc.stderr):
            raise AssertionError(f"luigi {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    def use_kafka(self, bootstrap: str, *, topic: str = "", group: str = "", encoding: str = "",
                  **kafka: object) -> "Project":
        """Stream through the broker at ``bootstrap``, on a topic and group of this test's own
        unless named; ``kafka``: more of the [kafka] section (connect_timeout_ms, ...)."""
        stream = {"transport": "kafka", "topic": topic or unique_name("images"), "group": group or unique_name("group")}
        self.set("stream", **stream, **({"encoding": encoding} if encoding else {}))
        return self.set("kafka", bootstrap_servers=bootstrap, **kafka)

    def use_postgres(self, url: str) -> "Project":
        """Store results in the PostgreSQL database at ``url`` (through $DATABASE_URL, as in production)."""
        self.env["DATABASE_URL"] = url
        self.pg = url
        return self

    def command(self, program: str, *args: str, timeout: float = 120) -> str:
        """Run one of the package's console scripts (e.g. vectorai-results) in this project."""
        exe = Path(sys.executable).parent / program
        proc = subprocess.run([str(exe), *args], cwd=self.root, env=self.command_env(), capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"{program} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def spawn(self, *args: str, local: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "luigi", "--module", "tasks", *args]
        if local:
            argv.append("--local-scheduler")
        return subprocess.Popen(argv, cwd=self.root, env=self.command_env(extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


#: Epochs every test project trains for unless a test says otherwise: 0.97 test accuracy on
#: mnist-sample in 40-50 s on 2 cores, against 0.98 in 105 s for the default 20 (which the
#: README's demo, test_clone, still trains). Enough for the tests' 0.95 bounds.
TEST_EPOCHS = 8


def new_project(root: Path, base: Path | None = None) -> Project:
    """A project dir; with ``base``, reuse its split data and trained models (copied, so tests
    never share state) instead of training again."""
    root.mkdir(parents=True, exist_ok=True)
    if base is not None:
        for part in ("data/processed", "models"):
            if (base / part).exists():
                shutil.copytree(base / part, root / part, dirs_exist_ok=True)
        if (base / "data" / "mlflow").exists():
            shutil.copytree(base / "data" / "mlflow", root / "data" / "mlflow", dirs_exist_ok=True)
            _point_store_at_copy(root / "data" / "mlflow" / "mlflow.db", base, root)
    project = Project(root)
    project.set("paths", data_dir=root / "data", models_dir=root / "models")
    project.set("TrainModel", epochs=TEST_EPOCHS)
    project.set("core", no_lock="true")
    project.set("retcode", already_running=10, missing_data=20, not_run=25, task_failed=30,
                scheduling_error=35, unhandled_exception=40)
    return project


#: MLflow's columns that hold an artifact location (an absolute path for a local store).
_ARTIFACT_COLUMNS = (
    "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
    "UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)",
    "UPDATE model_versions SET storage_location = replace(storage_location, ?, ?)",
    "UPDATE logged_models SET artifact_location = replace(artifact_location, ?, ?)",
)


def _point_store_at_copy(db: Path, base: Path, root: Path) -> None:
    """The copied MLflow store's artifact locations are absolute paths into ``base``: point them
    at the copy, or every copy would log (promotion decisions, ...) into the shared base's runs."""
    import sqlite3

    if not db.is_file():
        return
    with sqlite3.connect(db) as conn:
        for statement in _ARTIFACT_COLUMNS:
            try:
                conn.execute(statement, (str(base), str(root)))
            except sqlite3.OperationalError:  # a table this MLflow version does not have
                pass
    conn.close()


def shared_home(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A project ``build(root)`` makes once per run, which tests copy (``new_project(base=...)``)
    and never change. Under pytest-xdist it is made once for all workers too: the first to need
    it builds it in their common temp dir while the others wait."""
    from filelock import FileLock

    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = tmp_path_factory.mktemp(name) / "home"
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent  # the same for every worker of this run
    root, done = shared / name / "home", shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(root.parent, ignore_errors=True)  # a worker that failed part way
            build(root)
            done.touch()
    return root


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory) -> Path:
    """One project with the default mnist-sample model trained and exported, shared (by copy)
    across the integration tests so the 2-core CI trains once."""
    return shared_home(tmp_path_factory, "trained", lambda root: new_project(root).luigi("ExportOnnx"))


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory, trained_home) -> Path:
    """The shared model as registered version 1 and a second as version 2, exported and
    registered, neither promoted: seed 7 and 1 epoch, so it is both another seed's model (the
    fair-promotion tests) and a worse one (the registry tests). The test split is chosen by each
    image's content, the same for both seeds."""
    return shared_home(tmp_path_factory, "two-versions", lambda root: new_project(root, base=trained_home).luigi(
        "ExportOnnx", "--seed", "7", "--epochs", "1"))


@pytest.fixture
def project(tmp_path, trained_home) -> Project:
    """A fresh project that already has the trained model."""
    return new_project(tmp_path / "home", base=trained_home)


@pytest.fixture
def pg_database(postgres_url) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (tables are created by the pipeline)."""
    with fresh_pg_database(postgres_url) as url:
        yield url


@contextlib.contextmanager
def fresh_pg_database(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``postgres_url``, dropped afterwards; its URL."""
    import uuid

    import psycopg2
    from psycopg2 import sql

    def admin(statement: sql.Composable) -> None:
        # A new connection each time: a fault test may have restarted the server in between.
        conn = psycopg2.connect(postgres_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_rows(url: str, query: str = "SELECT * FROM prediction ORDER BY source, message_id") -> list[dict]:
    import psycopg2
    import psycopg2.extras

    with psycopg2.connect(url) as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(query)
        rows = [dict(r) for r in cur.fetchall()]
    conn.close()
    return rows


def unique_name(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:10]}"
