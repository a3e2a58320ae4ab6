"""The chain on Google's Pub/Sub emulator (started by the test session)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from tests.conftest import unique_name

pytestmark = pytest.mark.pubsub

PROJECT_ID = "vectorai-test"


@pytest.fixture
def pubsub_project(project, pubsub_emulator):
    project.set("stream", transport="pubsub", topic=unique_name("images"))
    project.set("pubsub", project=PROJECT_ID, subscription=unique_name("predict"), emulator_host=pubsub_emulator)
    return project


def rows(project) -> list[sqlite3.Row]:
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM prediction ORDER BY source, message_id").fetchall()


def reports(project) -> dict[str, dict]:
    return {json.loads(p.read_text())["run_at"]: json.loads(p.read_text())
            for p in (project.data / "reports").glob("*.json")}


def test_whole_chain_on_pubsub(pubsub_project):
    project = pubsub_project
    project.luigi("PredictTask")
    [manifest_path] = (project.data / "stream" / "manifests").glob("pubsub-*.json")
    manifest = json.loads(manifest_path.read_text())
    found = rows(project)
    assert sorted(r["message_id"] for r in found) == sorted(manifest["ids"]) and len(found) == 200
    assert {r["source"] for r in found} == {"pubsub"}
    assert reports(project)["adhoc"]["accuracy"] >= 0.95
    project.luigi("PredictTask", "--run-at", "later")
    assert reports(project)["later"]["consumed"] == 0 and len(rows(project)) == 200


@pytest.mark.kafka
def test_one_run_reads_kafka_and_pubsub(pubsub_project, kafka_bootstrap):
    project = pubsub_project
    project.set("kafka", bootstrap_servers=kafka_bootstrap)
    project.set("stream", group=unique_name("group"))
    project.luigi("StreamData", "--transport", "kafka", "--count", "60")
    project.luigi("StreamData", "--transport", "pubsub", "--count", "40")
    project.luigi("PredictTask", "--require-stream", "false", "--sources", "kafka,pubsub")
    found = rows(project)
    by_source = {s: sorted(r["message_id"] for r in found if r["source"] == s) for s in ("kafka", "pubsub")}
    # Ids are <dataset>-<index>-<content digest>.
    assert [i.rsplit("-", 1)[0] for i in by_source["kafka"]] == [f"mnist-sample-{i:08d}" for i in range(60)]
    assert [i.rsplit("-", 1)[0] for i in by_source["pubsub"]] == [f"mnist-sample-{i:08d}" for i in range(40)]
    assert reports(project)["adhoc"]["per_source"] == {"kafka": 60, "pubsub": 40}


def test_message_from_the_plain_pubsub_client_is_classified(pubsub_project, pubsub_emulator, monkeypatch):
    from google.cloud import pubsub_v1

    from vectorai.prepare import load_stream_sample

    project = pubsub_project
    # Creates the topic and subscription (nothing to consume yet).
    project.luigi("PredictTask", "--require-stream", "false", "--stream-timeout-ms", "500", "--run-at", "setup")
    [split_dir] = (project.data / "processed" / "mnist-sample").iterdir()
    sample = load_stream_sample(split_dir / "stream.npz", limit=8)
    # Exactly how Google documents using the emulator from any client.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT_ID, project.config["stream"]["topic"])
    futures = [publisher.publish(topic, np.asarray(image, np.uint8).tobytes(), id=f"gcp-{i}",
                                 **{"content-type": "application/x-ndarray", "dtype": "uint8", "shape": "28,28",
                                    "label": str(int(label)), "produced-at": "2026-11-26T07:00:00Z"})
               for i, (image, label) in enumerate(zip(sample.images, sample.labels))]
    for future in futures:
        future.result(timeout=30)
    project.luigi("PredictTask", "--require-stream", "false")
    found = rows(project)
    assert sorted(r["message_id"] for r in found) == sorted(f"gcp-{i}" for i in range(8))
    assert sum(r["predicted_class"] == r["true_label"] for r in found) >= 7


def test_failed_messages_are_redelivered_then_predicted_once(pubsub_project):
    project = pubsub_project
    project.luigi("StreamData", "--count", "50")
    # A results table that cannot take the rows: the run fails and must give the messages back.
    project.data.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.execute("CREATE TABLE prediction (broken INTEGER)")
    proc = project.luigi("PredictTask", "--require-stream", "false", "--run-at", "first", check=False)
    assert proc.returncode != 0 and "vectorai error: database" in proc.stdout + proc.stderr
    assert "first" not in reports(project) if (project.data / "reports").exists() else True
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.execute("DROP TABLE prediction")
    project.luigi("PredictTask", "--require-stream", "false", "--run-at", "second")
    found = rows(project)
    assert sorted(r["message_id"].rsplit("-", 1)[0] for r in found) == [f"mnist-sample-{i:08d}" for i in range(50)]
    assert reports(project)["second"]["predicted"] == 50
    project.luigi("PredictTask", "--require-stream", "false", "--run-at", "third")
    assert reports(project)["third"]["consumed"] == 0
