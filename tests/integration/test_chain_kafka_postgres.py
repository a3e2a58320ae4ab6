"""The chain on a real Kafka broker and a real PostgreSQL server, both started by the test session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import pg_rows

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def kafka_project(project, kafka_bootstrap, pg_database):
    return project.use_kafka(kafka_bootstrap).use_postgres(pg_database)


def reports(project) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((project.data / "reports").glob("*.json"))]


def test_whole_chain_on_kafka_and_postgres(kafka_project):
    project = kafka_project
    first = project.luigi("PredictTask")
    [manifest_path] = (project.data / "stream" / "manifests").glob("kafka-*.json")
    manifest = json.loads(manifest_path.read_text())
    rows = pg_rows(project.pg)
    assert sorted(r["message_id"] for r in rows) == sorted(manifest["ids"]) and len(rows) == 200
    assert {r["source"] for r in rows} == {"kafka"}
    assert all(r["position"].startswith(manifest["topic"] + "/0@") for r in rows)
    [report] = reports(project)
    assert report["predicted"] == 200 and report["accuracy"] >= 0.95
    assert report["database"].startswith("postgresql://")

    # Drained: a later scheduled run consumes nothing and writes nothing.
    project.luigi("PredictTask", "--run-at", "2026-11-26T08")
    warnings = [line for line in first.stderr.splitlines() if "WARNING" in line]  # e.g. commits refused
    assert [r["consumed"] for r in reports(project) if r["run_at"] == "2026-11-26T08"] == [0], warnings
    assert len(pg_rows(project.pg)) == 200


def wait_for_members(bootstrap: str, group: str, members: int, timeout_s: float = 120) -> None:
    """Until the group has ``members`` members that each hold a partition."""
    import time

    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                description = admin.describe_groups([group])[group]
            except KafkaError:  # the group (and its coordinator) appear with the first member
                description = {}
            # Stable with N members: the assignor has given each of the N partitions an owner.
            if description.get("group_state") == "Stable" and len(description.get("members", [])) == members:
                return
            time.sleep(0.5)
    finally:
        admin.close()
    raise AssertionError(f"group {group} never had {members} members with partitions")


def test_two_consumers_in_one_group_share_two_partitions(kafka_project, kafka_bootstrap):
    project = kafka_project
    project.set("kafka", partitions=2)
    # Both consumers are in the group, one partition each, before anything is sent.
    workers = [project.spawn("PredictTask", "--require-stream", "false", "--run-at", f"worker-{i}",
                             "--predict-batch-size", "10", "--stream-timeout-ms", "15000") for i in range(2)]
    try:
        wait_for_members(kafka_bootstrap, project.config["stream"]["group"], 2)
    except AssertionError as err:  # say why: the workers' own output
        for worker in workers:
            worker.kill()
        outputs = [worker.communicate()[0][-2000:] for worker in workers]
        raise AssertionError(f"{err}\n" + "\n----\n".join(outputs)) from None
    project.luigi("StreamData")
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-4000:]
    rows = pg_rows(project.pg)
    assert len(rows) == 200 and len({r["message_id"] for r in rows}) == 200
    runs = reports(project)
    assert sum(r["predicted"] for r in runs) == 200
    assert all(r["predicted"] > 0 for r in runs), runs  # both did work
    partitions = {r["position"].rsplit("@", 1)[0] for r in rows}
    assert len(partitions) == 2


def test_message_from_a_plain_kafka_producer_is_classified(kafka_project, kafka_bootstrap):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from vectorai.prepare import load_stream_sample

    project = kafka_project
    topic = project.config["stream"]["topic"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    [split_dir] = (project.data / "processed" / "mnist-sample").iterdir()
    sample = load_stream_sample(split_dir / "stream.npz", limit=10)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i, (image, label) in enumerate(zip(sample.images, sample.labels)):
        headers = [("id", f"foreign-{i}".encode()), ("content-type", b"application/x-ndarray"),
                   ("dtype", b"uint8"), ("shape", b"28,28"), ("label", str(int(label)).encode())]
        producer.send(topic, key=f"foreign-{i}".encode(), value=np.asarray(image, np.uint8).tobytes(), headers=headers)
    producer.flush()
    producer.close()
    project.luigi("PredictTask", "--require-stream", "false")
    rows = pg_rows(project.pg)
    assert sorted(r["message_id"] for r in rows) == sorted(f"foreign-{i}" for i in range(10))
    assert sum(r["predicted_class"] == r["true_label"] for r in rows) >= 9
    assert all(r["produced_at"] is None for r in rows)  # the producer sent no time: none invented
