"""What a user sees of a running chain: live state in a real luigid (status message, progress),
and the Prometheus text file PredictTask leaves. The MLflow link of a training run in luigid is
checked on the chain test_luigid_operations runs once (``fresh_chain``)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures_luigid import api

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

    # Small batches (a transaction each), so that the run lasts several seconds even on an idle
    # machine: progress is reported at most once a second, and 16 a batch could finish in one.
    worker = project.spawn("PredictTask", "--require-stream", "false", "--max-messages", str(count),
                           "--predict-batch-size", "4", "--stream-timeout-ms", "500",
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


