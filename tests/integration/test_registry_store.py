"""The registry against a real ``mlflow server``, with tiny hand-made ONNX models (no training):
two promotions at once, the model cache checked against the registry's SHA-256 tag, a retried
registration, and the store's credentials kept to that store and that call."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.unit.helpers import expected_classes, tiny_onnx_model
from vectorai.errors import RegistryError
from vectorai.preprocess import PreprocessSpec, preprocess_images

pytestmark = pytest.mark.mlflow

SPEC = PreprocessSpec(8, 8, 1)
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(scope="module")
def server_folder(shared_mlflow) -> Path:
    return shared_mlflow.folder


@pytest.fixture(scope="module")
def server(shared_mlflow) -> str:
    os.environ.update(NO_TELEMETRY)
    return shared_mlflow.url


def images_and_models(tmp_path: Path, count: int = 300) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """Images, labels that the ``good`` model gets all right, and the good and a worse model."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(count, 8, 8), dtype=np.uint8)
    good, worse = tmp_path / "good.onnx", tmp_path / "worse.onnx"
    weights = tiny_onnx_model(good, classes=3, seed=1)
    other = tiny_onnx_model(worse, classes=3, seed=2)
    prepared = preprocess_images(images, SPEC)
    labels = expected_classes(weights, prepared)
    assert np.mean(expected_classes(other, prepared) == labels) < 0.9  # really worse
    return images, labels, good, worse


def register(server: str, name: str, onnx_path: Path, run_name: str = "r", **tags: object):
    import mlflow

    from vectorai.registry import register_onnx_model

    mlflow.set_tracking_uri(server)
    experiment = mlflow.set_experiment("registry-store")
    run = mlflow.MlflowClient(server).create_run(experiment.experiment_id, run_name=run_name)
    example = preprocess_images(np.zeros((1, 8, 8), np.uint8), SPEC)
    return register_onnx_model(onnx_path, tracking_uri=server, run_id=run.info.run_id, name=name,
                               input_example=example, tags={"parity_passed": "true", **tags})


def aliases(server: str, name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return {k: str(v) for k, v in MlflowClient(server, registry_uri=server).get_registered_model(name).aliases.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- two promotions at once ---------------------------------------------------------------------


class _AfterBarrier:
    """Images that make the first evaluation wait until every process has read @champion: the
    two promotions are then certainly concurrent, whichever process starts first."""

    def __init__(self, images: np.ndarray, barrier) -> None:
        self.images, self.barrier, self.waited = images, barrier, False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if not self.waited:
            self.waited = True
            self.barrier.wait(timeout=120)
        return self.images[index]


def _promote(server, name, version, images, labels, cache_dir, barrier, results) -> None:
    from vectorai.registry import promote_version

    os.environ.update(NO_TELEMETRY)
    try:
        results.put((version, promote_version(name, version, tracking_uri=server, images=_AfterBarrier(images, barrier),
                                              labels=labels, cache_dir=Path(cache_dir))))
    except BaseException as err:  # noqa: BLE001 - reported to the test
        results.put((version, f"{type(err).__name__}: {err}"))


def test_two_promotions_at_once_end_as_if_one_ran_after_the_other(server, tmp_path):
    name = "race"
    images, labels, good_path, worse_path = images_and_models(tmp_path)
    good, worse = register(server, name, good_path).version, register(server, name, worse_path).version

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_promote, args=(server, name, version, images, labels, str(tmp_path / "cache"),
                                                    barrier, results)) for version in (good, worse)]
    for proc in procs:
        proc.start()
    records = dict(results.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert all(isinstance(r, dict) for r in records.values()), records

    # The better model is champion whatever the order, and each decision names the champion it
    # was really judged against.
    assert aliases(server, name)["champion"] == good
    assert records[good]["promote"] and records[good]["candidate"]["accuracy"] == 1.0
    if records[worse]["promote"]:  # the worse one moved first, onto an empty registry ...
        assert records[worse]["champion"] is None
        # ... so the good one saw @champion move, judged again and replaced it: previous is right.
        assert records[good]["champion"]["version"] == worse and "judged again" in records[good]["reason"]
        assert records[good]["aliases"] == {"champion": good, "previous": worse}
        assert aliases(server, name) == {"champion": good, "previous": worse}
    else:  # the good one moved first; the worse one was judged again against it and refused
        assert records[good]["champion"] is None
        assert records[worse]["outcome"] == "refused" and records[worse]["champion"]["version"] == good
        assert "judged again" in records[worse]["reason"] and "below" in records[worse]["reason"]
        assert aliases(server, name) == {"champion": good}


# --- the model cache ----------------------------------------------------------------------------


def _fetch(server, ref, cache_dir, barrier, results) -> None:
    from vectorai.registry import fetch_model

    os.environ.update(NO_TELEMETRY)
    barrier.wait(timeout=120)
    try:
        path = fetch_model(ref, server, Path(cache_dir), SPEC)
        results.put((str(path), sha256(path)))
    except BaseException as err:  # noqa: BLE001
        results.put((f"{type(err).__name__}: {err}", ""))


def test_every_version_carries_its_sha256_and_a_first_download_by_three_processes_agrees(server, tmp_path):
    from vectorai.registry import resolve

    _, _, good_path, _ = images_and_models(tmp_path, 10)
    version = register(server, "cached", good_path).version
    ref = resolve(f"models:/cached/{version}", server)
    assert len(ref.sha256) == 64

    cache = tmp_path / "cache"
    for attempt in range(2):  # a first download, then again over a copy that is in place
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(3), context.Queue()
        procs = [context.Process(target=_fetch, args=(server, ref, str(cache), barrier, results)) for _ in range(3)]
        for proc in procs:
            proc.start()
        got = [results.get(timeout=300) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        final = cache / "cached" / version / "model.onnx"
        assert got == [(str(final), ref.sha256)] * 3, (attempt, got)
        assert sorted(p.name for p in final.parent.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_a_cached_copy_is_checked_against_the_registry_not_against_itself(server, tmp_path):
    from vectorai.registry import fetch_model, resolve

    _, _, good_path, worse_path = images_and_models(tmp_path, 10)
    version = register(server, "tampered", good_path).version
    ref = resolve(f"models:/tampered/{version}", server)
    cache = tmp_path / "cache"
    path = fetch_model(ref, server, cache, SPEC)
    assert sha256(path) == ref.sha256

    # Another model in the cache, with any digest beside it rewritten to match: still not used.
    shutil.copyfile(worse_path, path)
    for beside in path.parent.glob("*.json"):
        beside.write_text(json.dumps({**json.loads(beside.read_text()), "sha256": sha256(worse_path)}))
    again = fetch_model(ref, server, cache, SPEC)
    assert again == path and sha256(again) == ref.sha256


def test_a_download_that_does_not_match_the_tag_is_refused(server, server_folder, tmp_path):
    from vectorai.registry import fetch_model, resolve

    _, _, good_path, worse_path = images_and_models(tmp_path, 10)
    version = register(server, "damaged", good_path).version
    ref = resolve(f"models:/damaged/{version}", server)
    stored = [p for p in (server_folder / "mlflow-artifacts").rglob("model.onnx") if sha256(p) == ref.sha256]
    assert stored, "the registered model.onnx is not in the server's artifact folder"
    for path in stored:
        shutil.copyfile(worse_path, path)
    with pytest.raises(RegistryError) as err:
        fetch_model(ref, server, tmp_path / "cache", SPEC)
    assert f"models:/damaged/{version}" in str(err.value) and ref.sha256 in str(err.value)
    assert "sha256 tag" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "damaged" / version / "model.onnx").exists()


def test_a_retried_registration_returns_the_run_s_version_instead_of_a_new_one(server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from vectorai.registry import register_onnx_model

    _, _, good_path, _ = images_and_models(tmp_path, 10)
    first = register(server, "retried", good_path, accuracy=0.5)
    example = preprocess_images(np.zeros((1, 8, 8), np.uint8), SPEC)
    mlflow.set_tracking_uri(server)
    again = register_onnx_model(good_path, tracking_uri=server, run_id=first.run_id, name="retried",
                                input_example=example, tags={"accuracy": 0.5})
    assert again == first
    versions = MlflowClient(server, registry_uri=server).search_model_versions("name = 'retried'")
    assert [str(v.version) for v in versions] == [first.version]
    # Another run is another export: a new version.
    assert register(server, "retried", good_path, run_name="other").version != first.version


# --- credentials ----------------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in MLflow host that records each request's Authorization header and answers
    "not found" (the registry call then fails cleanly)."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_store_s_credentials_go_to_that_store_only_and_leave_no_trace_in_the_environment(
        server, tmp_path, recorder, monkeypatch):
    from vectorai.registry import alias_version, fetch_model, resolve

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _, _, good_path, _ = images_and_models(tmp_path, 10)
    version = register(server, "secret", good_path).version
    host = server.removeprefix("http://")

    # Real calls to the real server with a user and password in the URI: they work ...
    with_password = f"http://alice:s3cret-pw@{host}"
    ref = resolve(f"models:/secret/{version}", with_password)
    assert sha256(fetch_model(ref, with_password, tmp_path / "cache")) == ref.sha256
    # ... and leave nothing for a child process started afterwards.
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_USERNAME" not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print([k for k in os.environ if k in "
                            "('MLFLOW_TRACKING_USERNAME', 'MLFLOW_TRACKING_PASSWORD')])"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "[]"

    # The stand-in host gets the credentials of its own URI, and none when its URI has none.
    address, seen = recorder
    assert alias_version("secret", "champion", f"http://bob:pw2@{address}") is None
    assert alias_version("secret", "champion", f"http://{address}") is None
    basic = "Basic " + base64.b64encode(b"bob:pw2").decode()
    assert seen and all(path.startswith("/api/2.0/mlflow/") for path, _ in seen)
    assert [auth for _, auth in seen] == [basic] * (len(seen) // 2) + [None] * (len(seen) // 2), seen
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_a_version_whose_files_are_on_another_host_gets_no_credentials(server, server_folder, tmp_path, recorder,
                                                                         monkeypatch):
    """A version may name any http(s) host as the place of its files. MLflow 3's server refuses
    such a source when it is registered unless its operator allows host-addressed schemes
    (MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES); an older server, an allowed scheme or anyone
    who can write the store's database accept it, so the test writes it into the store as they
    would. The stand-in host records every Authorization header it receives."""
    import sqlite3

    from vectorai.registry import fetch_model, resolve

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _, _, good_path, _ = images_and_models(tmp_path, 10)
    version = register(server, "elsewhere", good_path).version
    address, seen = recorder
    foreign = f"http://{address}/api/2.0/mlflow-artifacts/artifacts/elsewhere"
    with sqlite3.connect(server_folder / "mlflow-server.db") as db:
        changed = db.execute("UPDATE model_versions SET source = ?, storage_location = ? WHERE name = ? AND "
                             "version = ?", (foreign, foreign, "elsewhere", int(version))).rowcount
    assert changed == 1
    with_password = f"http://alice:s3cret-pw@{server.removeprefix('http://')}"

    ref = resolve(f"models:/elsewhere/{version}", with_password)
    with pytest.raises(RegistryError) as err:
        fetch_model(ref, with_password, tmp_path / "cache")

    assert seen == [], "the foreign host was contacted (with the store's credentials)"
    message = str(err.value)
    assert message.startswith(f"model models:/elsewhere/{version}: its files are on http://{address}"), message
    assert f"another host than the MLflow store {server}" in message and "\n" not in message
    assert "s3cret-pw" not in message
    # The server's own versions still download, with the same credentials.
    own = register(server, "at-home", good_path).version
    home = resolve(f"models:/at-home/{own}", with_password)
    assert sha256(fetch_model(home, with_password, tmp_path / "cache")) == home.sha256


def test_a_run_whose_files_are_on_another_host_gets_no_credentials(server, server_folder, tmp_path, recorder,
                                                                   monkeypatch):
    """The same for what a version trained on, read from its run's files when it is promoted."""
    import sqlite3

    from vectorai.registry import resolve, trained_on

    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _, _, good_path, _ = images_and_models(tmp_path, 10)
    ref = register(server, "trained-elsewhere", good_path, trained_on_digest="0" * 64)
    address, seen = recorder
    with sqlite3.connect(server_folder / "mlflow-server.db") as db:
        changed = db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?",
                             (f"http://{address}/api/2.0/mlflow-artifacts/artifacts/run", ref.run_id)).rowcount
    assert changed == 1
    with_password = f"http://alice:s3cret-pw@{server.removeprefix('http://')}"

    with pytest.raises(RegistryError) as err:
        trained_on(resolve(ref.uri, with_password), with_password)

    assert seen == [], "the foreign host was contacted (with the store's credentials)"
    assert str(err.value).startswith(f"model {ref.uri}: its files are on http://{address}"), str(err.value)
    assert "s3cret-pw" not in str(err.value)
