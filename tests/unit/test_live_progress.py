"""What a running task reports while it works: the library's plain callbacks (prediction,
publishing, training), the MLflow links, and the status sender the tasks hand them to."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from tasks.live import LiveStatus, predict_status
from tests.unit.helpers import tiny_onnx_model
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import RunReport, run_predictions
from vectorai.streaming import publish_images
from vectorai.tracking import describe_run, run_page_url
from vectorai.transports import open_transport
from vectorai.transports.base import OutgoingMessage


@pytest.fixture
def classifier(tmp_path):
    tiny_onnx_model(tmp_path / "tiny.onnx")
    return OnnxClassifier(tmp_path / "tiny.onnx")


def _stream(tmp_path, topic: str, count: int, poison: int = 0) -> None:
    with open_transport("local", root=tmp_path, topic=topic) as producer:
        producer.publish([encode_image(np.full((8, 8), i % 256, np.uint8), f"{topic}{i}") for i in range(count)]
                         + [OutgoingMessage(b"junk", {"id": f"{topic}-bad{i}", "content-type": "image/png"})
                            for i in range(poison)])
        producer.flush(5)


def test_prediction_progress_counts_each_source_after_its_commits(tmp_path, classifier):
    _stream(tmp_path, "a", 50, poison=3)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    seen: list[dict] = []

    def watch(report: RunReport) -> None:
        # What the report says must already be in the database: progress follows commits.
        seen.append({"predicted": report.by_source["local"].predicted, "seconds": report.seconds,
                     "stored": results_db.Prediction.select().count(),
                     "dead": report.by_source["local"].dead_letters})

    with open_transport("local", root=tmp_path, topic="a") as source:
        report = run_predictions([source], classifier, database, batch_size=8, timeout_ms=50,
                                 progress=watch, progress_interval_s=0)

    assert len(seen) == report.batches == 7  # interval 0: after every committed batch
    assert [s["predicted"] for s in seen] == sorted(s["predicted"] for s in seen)
    assert all(s["predicted"] <= s["stored"] for s in seen) and seen[-1]["predicted"] == 50
    assert seen[-1]["dead"] == 3 and all(s["seconds"] > 0 for s in seen)
    local = report.to_dict()["by_source"]["local"]
    assert local == {"consumed": 53, "predicted": 50, "already_predicted": 0, "duplicates": 0, "dead_letters": 3}


def test_prediction_progress_comes_at_most_once_per_interval(tmp_path, classifier):
    _stream(tmp_path, "a", 64)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    calls: list[float] = []
    with open_transport("local", root=tmp_path, topic="a") as source:
        started = time.monotonic()
        report = run_predictions([source], classifier, database, batch_size=1, timeout_ms=50,
                                 progress=lambda _: calls.append(time.monotonic()), progress_interval_s=0.2)
        elapsed = time.monotonic() - started
    assert report.batches == 64
    assert len(calls) <= elapsed / 0.2 + 1
    assert all(later - earlier >= 0.2 for earlier, later in zip(calls, calls[1:]))


def test_per_source_counts_add_up_over_two_sources_and_a_redelivery(tmp_path, classifier):
    _stream(tmp_path, "a", 20)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="a", group="first") as source:
        run_predictions([source], classifier, database, batch_size=8, timeout_ms=50)
    # Another group reads the same 20 again: already stored, counted as such for its source.
    with open_transport("local", root=tmp_path, topic="a", group="second") as source:
        report = run_predictions([source], classifier, database, batch_size=8, timeout_ms=50)
    counts = report.by_source["local"]
    assert (counts.consumed, counts.predicted, counts.already_predicted) == (20, 0, 20)
    message, percentage = predict_status(report, max_messages=40)
    first, drift = message.splitlines()
    assert first.startswith("local: consumed 20, predicted 0, dead letters 0, ") and first.endswith(" images/s")
    assert drift.startswith("no drift test (no reference); estimated accuracy ")
    assert percentage == 50.0
    assert predict_status(report)[1] is None  # no end known: no percentage


def test_publishing_reports_sent_and_confirmed_and_confirmed_means_stored(tmp_path):
    images = np.zeros((2500, 8, 8), np.uint8)
    seen: list[tuple[int, int, int, int]] = []
    with open_transport("local", root=tmp_path, topic="t") as producer, \
            open_transport("local", root=tmp_path, topic="t", group="watcher") as watcher:
        def watch(sent: int, confirmed: int, total: int) -> None:
            seen.append((sent, confirmed, total, watcher.lag()))

        publish_images(producer, images, None, dataset="d", encoding="raw", timeout_s=5, chunk=1000,
                       progress=watch, confirm_interval_s=0)
    assert [s[:3] for s in seen] == [(1000, 1000, 2500), (2000, 2000, 2500), (2500, 2500, 2500),
                                     (2500, 2500, 2500)]
    assert all(stored == confirmed for _, confirmed, _, stored in seen)


def test_publishing_confirms_only_at_the_end_within_the_interval(tmp_path):
    seen: list[tuple[int, int, int]] = []
    with open_transport("local", root=tmp_path, topic="t") as producer:
        publish_images(producer, np.zeros((30, 8, 8), np.uint8), None, dataset="d", encoding="raw", timeout_s=5,
                       chunk=10, progress=lambda *state: seen.append(state), confirm_interval_s=3600)
    assert seen == [(10, 0, 30), (20, 0, 30), (30, 0, 30), (30, 30, 30)]


def test_run_page_links_never_carry_credentials():
    url = run_page_url("https://alice:s3cr%40t@mlflow.example:5000/", "7", "abc123")
    assert url == "https://mlflow.example:5000/#/experiments/7/runs/abc123"
    assert run_page_url("sqlite:////data/mlflow.db", "7", "abc123") is None
    line = describe_run("https://alice:s3cr%40t@mlflow.example:5000", "7", "abc123")
    assert "s3cr" not in line and "alice" not in line and "abc123" in line


def test_a_local_store_is_described_by_its_run_id_and_the_mlflow_ui_command():
    line = describe_run("sqlite:////work/data/mlflow/mlflow.db", "3", "abc123")
    assert line == ("MLflow run abc123: mlflow ui --backend-store-uri sqlite:////work/data/mlflow/mlflow.db, "
                    "then http://127.0.0.1:5000/#/experiments/3/runs/abc123")
    masked = describe_run("postgresql://ml:hunter2@db/mlflow", "3", "abc123")
    assert "hunter2" not in masked and "postgresql://ml:***@db/mlflow" in masked


class _Recorder:
    """Stands in for the worker's status methods (the real luigid is in the integration tests):
    records what reaches them, and when."""

    task_family = "Recorder"
    task_id = "Recorder()"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, object, float]] = []
        self.fail = fail
        self.set_tracking_url = lambda url: self._record("url", url)
        self.set_status_message = lambda message: self._record("message", message)
        self.set_progress_percentage = lambda percentage: self._record("percentage", percentage)

    def _record(self, kind: str, value: object) -> None:
        if self.fail:
            raise ConnectionError("luigid at http://u:pw@127.0.0.1:1 went away")
        self.calls.append((kind, value, time.monotonic()))


def test_status_updates_are_coalesced_to_one_a_second_and_the_last_one_is_sent():
    task = _Recorder()
    with LiveStatus(task, min_interval_s=0.3) as live:
        for i in range(200):
            live.update(f"step {i}", i / 2)
            time.sleep(0.005)  # about a second of updates
        live.update(tracking_url="http://mlflow/#/experiments/1/runs/x")
    messages = [(value, at) for kind, value, at in task.calls if kind == "message"]
    assert messages[-1][0] == "step 199", "the last update must reach the scheduler"
    assert len(messages) <= 6
    assert all(b - a >= 0.29 for (_, a), (_, b) in zip(messages[:-1], messages[1:-1]))
    assert ("percentage", 99) in [(kind, value) for kind, value, _ in task.calls]
    assert task.calls[-3][:2] == ("url", "http://mlflow/#/experiments/1/runs/x")


def test_an_update_returns_at_once_while_the_scheduler_is_slow():
    release = threading.Event()
    task = _Recorder()
    task.set_status_message = lambda message: release.wait(5)
    live = LiveStatus(task, min_interval_s=0)
    started = time.monotonic()
    for i in range(1000):
        live.update(f"step {i}")
    assert time.monotonic() - started < 0.5
    release.set()
    live.close()


def test_a_scheduler_that_went_away_is_logged_once_and_the_task_goes_on(caplog):
    task = _Recorder(fail=True)
    with caplog.at_level(logging.WARNING, logger="luigi-interface"):
        with LiveStatus(task, min_interval_s=0) as live:
            for i in range(5):
                live.update(f"step {i}", 10)
                time.sleep(0.02)
    warnings = [r.getMessage() for r in caplog.records if "could not update its status" in r.getMessage()]
    assert len(warnings) == 1 and "went away" in warnings[0] and ":pw@" not in warnings[0]


def test_outside_a_worker_nothing_is_sent():
    task = _Recorder()
    task.set_status_message = task.set_progress_percentage = task.set_tracking_url = None
    with LiveStatus(task, min_interval_s=0) as live:
        live.update("hello", 5, "http://x")  # no error, nothing to send it to


def test_luigid_s_status_line_says_whether_the_stream_drifted_and_both_accuracies():
    from tasks.live import drift_line

    drifted = {"score": 0.66, "p_value": 8e-82, "drifted": True, "estimated_accuracy": 0.7965,
               "measured_accuracy": 0.14, "reference": {}, "tested_windows": 4, "drifted_windows": 1}
    assert drift_line(drifted) == ("DRIFT: score 0.66, p 8e-82 (1 of 4 windows drifted); estimated accuracy "
                                   "79.7 %, measured 14.0 % (unreliable under drift)")
    steady = {**drifted, "p_value": 0.5, "drifted": False, "drifted_windows": 0, "measured_accuracy": None}
    assert drift_line(steady) == "no drift: score 0.66, p 0.5 (0 of 4 windows drifted); estimated accuracy 79.7 %"
