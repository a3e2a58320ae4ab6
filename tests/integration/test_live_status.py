"""What a user sees of a running chain: live state in a real luigid (status message, progress,
MLflow link to a real ``mlflow server``), and the Prometheus text file PredictTask leaves."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import free_port, port_open
from tests.conftest import new_project
from tests.integration.test_luigid import api, luigid  # noqa: F401 - luigid is a fixture used below

STATUS_LINE = re.compile(r"local: consumed ([\d,]+), predicted ([\d,]+), dead letters ([\d,]+), ([\d,]+) images/s")


def prom_samples(path: Path) -> dict[str, tuple[float, dict[str, str]]]:
    """metric name -> (value, labels) for the one source of a file, parsed by Prometheus' client."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[sample.name] = (sample.value, sample.labels)
    return found


def running(port: int, family: str) -> list[dict]:
    tasks = api(port, "task_list", {"status": "RUNNING", "upstream_status": "", "search": ""})
    return [task for task in tasks.values() if task["name"] == family]


@pytest.mark.luigid
def test_a_running_prediction_shows_its_progress_in_luigid_and_leaves_a_metrics_file(project, luigid, tmp_path):
    count = 20_000
    rng = np.random.default_rng(0)
    sample = tmp_path / "burst.npz"
    np.savez(sample, x=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
    project.set("stream", encoding="raw")
    project.luigi("StreamData", "--sample-file", str(sample))

    # Small batches, so that the run lasts several seconds on two cores.
    worker = project.spawn("PredictTask", "--require-stream", "false", "--max-messages", str(count),
                           "--predict-batch-size", "16", "--stream-timeout-ms", "500",
                           "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid), local=False)
    seen: list[dict] = []
    try:
        while worker.poll() is None:
            seen += [task for task in running(luigid, "PredictTask") if task["status_message"]]
            time.sleep(0.1)
    finally:
        output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0 and ":)" in output, output[-4000:]

    # While it ran: consumed, predicted, dead letters and images/s of the source, and the share
    # of --max-messages done. (About once a second: a fast machine may show only one state.)
    live = [(task["progress_percentage"], STATUS_LINE.search(task["status_message"])) for task in seen]
    live = [(percentage, match) for percentage, match in live if match]
    assert live, f"no live progress seen in luigid: {seen[-3:]}"
    consumed = [int(match.group(1).replace(",", "")) for _, match in live]
    assert consumed == sorted(consumed) and 0 < consumed[0] < count
    assert any(0 < percentage < 100 for percentage, _ in live)
    assert all(int(match.group(4).replace(",", "")) > 0 for _, match in live)

    done = api(luigid, "task_list", {"status": "DONE", "upstream_status": "", "search": ""})
    final = next(task for task in done.values() if task["name"] == "PredictTask")
    assert final["progress_percentage"] == 100 and final["status_message"].startswith("done in ")
    assert f"local: consumed {count:,}, predicted {count:,}, dead letters 0" in final["status_message"]

    metrics = prom_samples(project.data / "metrics" / "vectorai_predict_local.prom")
    assert metrics["vectorai_predict_last_run_messages_consumed"][0] == count
    assert metrics["vectorai_predict_last_run_messages_predicted"][0] == count
    assert metrics["vectorai_predict_last_run_images_per_second"][0] > 0
    assert abs(metrics["vectorai_predict_last_success_timestamp_seconds"][0] - time.time()) < 600
    # Scored with the registered champion: rows and metrics name it NAME/VERSION.
    registered = json.loads(next((project.root / "models").glob("*/onnx/model.json")).read_text())["registered_model"]
    model_version = f"{registered['name']}/{registered['version']}"
    assert metrics["vectorai_predict_last_run_messages_consumed"][1] == {
        "predict_job": "local", "source": "local", "model_version": model_version}


def test_a_failed_prediction_records_its_time_and_keeps_the_last_success(project, tmp_path):
    project.luigi("PredictTask")
    path = project.data / "metrics" / "vectorai_predict_local.prom"
    succeeded = prom_samples(path)

    failed = project.luigi("PredictTask", "--run-at", "second", "--require-stream", "false",
                           "--model-path", str(tmp_path / "missing.onnx"), check=False)
    assert failed.returncode == 30, failed.stderr[-3000:]

    after = prom_samples(path)
    success, _ = after["vectorai_predict_last_success_timestamp_seconds"]
    failure, labels = after["vectorai_predict_last_failure_timestamp_seconds"]
    assert success == succeeded["vectorai_predict_last_success_timestamp_seconds"][0] < failure
    consumed = "vectorai_predict_last_run_messages_consumed"
    assert after[consumed] == succeeded[consumed]
    assert labels["source"] == "local" and labels["model_version"]  # the last run's model, kept

    # Turned off: the file is left as it was.
    written = path.read_text()
    project.set("paths", metrics_dir="none")
    project.luigi("PredictTask", "--run-at", "third")
    assert path.read_text() == written and [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on a free loopback port, with its store and artifacts in tmp_path."""
    with running_mlflow_server(tmp_path) as url:
        yield url


@contextlib.contextmanager
def running_mlflow_server(folder: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, its store and artifacts in ``folder``; its URL."""
    port = free_port()
    log_path = folder / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow-server.db'}",
             "--artifacts-destination", str(folder / "mlflow-artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    try:
        deadline = time.monotonic() + 180  # it migrates its database first: 40 s on a busy 2-core VM
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                # Never a skip: mlflow is installed with the project, so this is a real failure.
                pytest.fail(f"mlflow server did not start: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
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


@pytest.mark.luigid
def test_training_links_to_its_run_on_an_mlflow_server_without_the_password(tmp_path, luigid, mlflow_server):
    project = new_project(tmp_path / "fresh")
    # A server without authentication ignores the credentials; they must still never be shown.
    host = mlflow_server.removeprefix("http://")
    project.set("mlflow", tracking_uri=f"http://alice:s3cret-pw@{host}")
    project.luigi("ExportOnnx", "--epochs", "1", "--stream-size", "20", "--scheduler-host", "127.0.0.1",
                  "--scheduler-port", str(luigid), local=False,
                  extra_env={"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})

    done = api(luigid, "task_list", {"status": "DONE", "upstream_status": "", "search": ""})
    tasks = {task["name"]: task for task in done.values()}
    train, export = tasks["TrainModel"], tasks["ExportOnnx"]
    url = train["tracking_url"]
    assert url and url.startswith(f"{mlflow_server}/#/experiments/") and "s3cret" not in url and "alice" not in url
    assert export["tracking_url"] == url  # the ONNX model is logged to the same run
    assert train["progress_percentage"] == 100 and train["status_message"].startswith("epoch 1/1: loss ")
    assert "val_accuracy" in train["status_message"] and "s3cret" not in train["status_message"]

    # The link answers (the UI's page), and the run it names is the one that was trained.
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
    experiment_id, run_id = re.fullmatch(r".*/#/experiments/([^/]+)/runs/([^/]+)", url).groups()
    run = mlflow_api(mlflow_server, "runs/get", run_id=run_id)["run"]
    model_name = next((project.root / "models").iterdir()).name
    assert run["info"]["experiment_id"] == experiment_id and run["info"]["run_name"] == model_name
    assert run["info"]["status"] == "FINISHED" and run_id in train["status_message"]
    assert {m["key"] for m in run["data"]["metrics"]} >= {"val_accuracy", "test_accuracy"}
    listed = mlflow_api(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])
    onnx = mlflow_api(mlflow_server, "artifacts/list", run_id=run_id, path="onnx").get("files", [])
    assert "model.keras" in {a["path"] for a in listed} and "onnx/model.onnx" in {a["path"] for a in onnx}
