"""One real ``mlflow server`` for the whole session (it migrates its database on start: about 40 s
on a busy 2-core machine, so it is started once). Tests share it by each using a registered-model
name and experiment of its own."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from services.common import ServiceError, free_port, port_open, wait_until

NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@dataclass(frozen=True)
class MlflowServer:
    url: str
    folder: Path  # its store and, under mlflow-artifacts/, the artifacts it serves

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")


@contextlib.contextmanager
def running_mlflow_server(folder: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, its store and artifacts in ``folder``; its URL."""
    port = free_port()
    log_path = folder / "mlflow-server.log"
    env = {**os.environ, **NO_TELEMETRY}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow-server.db'}",
             "--artifacts-destination", str(folder / "mlflow-artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    try:
        try:
            # It migrates its database first: 40 s on a busy 2-core machine. An exited server ends the wait.
            wait_until(lambda: proc.poll() is not None or _healthy(port), 180, "mlflow server", log_path)
        except ServiceError as err:
            pytest.fail(str(err))
        if proc.poll() is not None:
            # Never a skip: mlflow is installed with the project, so this is a real failure.
            pytest.fail(f"mlflow server exited: {log_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(port: int) -> bool:
    if not port_open(port):
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def mlflow_api(server: str, endpoint: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{server}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}",
                                timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def shared_mlflow(tmp_path_factory) -> Iterator[MlflowServer]:
    """The session's MLflow server; use a registered-model name of your own (``unique_name``)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(folder) as url:
        yield MlflowServer(url, folder)


@pytest.fixture
def mlflow_server(shared_mlflow: MlflowServer) -> str:
    """The session MLflow server's URL."""
    return shared_mlflow.url
