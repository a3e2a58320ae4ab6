"""Fault injection against the real services: nothing lost, nothing twice, no bad input stops a run.

Each test streams a few thousand messages (the 200-image sample tiled, with unique ids), breaks
something while a task runs, re-runs, and then counts rows exactly.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from tests.conftest import pg_rows, unique_name

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

N = 3000


@pytest.fixture
def fault_project(project, kafka_bootstrap, pg_database, tmp_path):
    from vectorai.prepare import load_stream_sample

    [split_dir] = (project.data / "processed" / "mnist-sample").iterdir()
    sample = load_stream_sample(split_dir / "stream.npz")
    reps = -(-N // len(sample))
    images = np.concatenate([sample.images] * reps)[:N]
    labels = np.concatenate([sample.labels] * reps)[:N]
    np.savez(tmp_path / "big.npz", x=images, y=labels)
    project.use_kafka(kafka_bootstrap, topic=unique_name("faults"), encoding="raw", connect_timeout_ms=5000)
    project.use_postgres(pg_database)
    project.set("StreamData", sample_file=tmp_path / "big.npz")
    project.set("PredictTask", require_stream="false", predict_batch_size=20, stream_timeout_ms=3000)
    return project


def count_rows(url: str) -> int:
    if pg_rows(url, "SELECT to_regclass('prediction') IS NULL AS missing")[0]["missing"]:
        return 0  # the task has not created its tables yet
    return pg_rows(url, "SELECT COUNT(*) AS n FROM prediction")[0]["n"]


def wait_for_rows(url: str, at_least: int, proc, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = count_rows(url)
        if n >= at_least:
            return n
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows after {timeout_s}s")


def drain(project, label: str, attempts: int = 3) -> None:
    """Re-run PredictTask (each a new scheduled run) until the stream is drained."""
    for i in range(attempts):
        proc = project.luigi("PredictTask", "--run-at", f"{label}-{i}", check=False)
        if proc.returncode == 0:
            report = json.loads(next((project.data / "reports").glob(f"*-{label}-{i}-*.json")).read_text())
            if report["consumed"] == 0:
                return
    raise AssertionError(f"stream not drained after {attempts} runs")


def assert_exactly_once(project) -> None:
    rows = pg_rows(project.pg, "SELECT message_id FROM prediction")
    ids = [r["message_id"] for r in rows]
    runs = {p.name: json.loads(p.read_text()) for p in (project.data / "reports").glob("*.json")}
    manifests = [json.loads(p.read_text())["count"] for p in (project.data / "stream" / "manifests").glob("*.json")]
    assert len(ids) == len(set(ids)) == N, (manifests, {k: (v["consumed"], v["predicted"]) for k, v in runs.items()})
    assert {i.rsplit("-", 1)[0] for i in ids} == {f"big-{i:08d}" for i in range(N)}  # ids: big-<index>-<digest>


def committed_offsets(bootstrap: str, group: str) -> int:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets([group]).get(group, {})
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)
    finally:
        admin.close()


def test_predict_killed_mid_batch_then_rerun(fault_project):
    project = fault_project
    project.luigi("StreamData")
    proc = project.spawn("PredictTask", "--run-at", "killed")
    wait_for_rows(project.pg, 500, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert count_rows(project.pg) < N
    drain(project, "after-kill")
    assert_exactly_once(project)


def test_broker_restarted_during_stream_and_predict(fault_project, kafka_broker):
    project = fault_project
    streamer = project.spawn("StreamData")
    time.sleep(4)  # the producer is connected and sending (TF-free start takes ~3 s)
    kafka_broker.stop(graceful=False)
    time.sleep(3)
    kafka_broker.restart()
    output, _ = streamer.communicate(timeout=300)
    if streamer.returncode != 0:  # a clear failure is allowed; then the user re-runs it
        assert "vectorai error: transport kafka" in output, output[-3000:]
        project.luigi("StreamData")

    predictor = project.spawn("PredictTask", "--run-at", "interrupted")
    wait_for_rows(project.pg, 500, predictor)
    kafka_broker.stop(graceful=False)
    time.sleep(3)
    kafka_broker.restart()
    output, _ = predictor.communicate(timeout=300)
    assert predictor.returncode == 0 or "vectorai error: transport kafka" in output, output[-3000:]
    drain(project, "after-restart")
    assert_exactly_once(project)


def test_broker_stopped_while_predict_waits_for_messages(fault_project, kafka_broker, kafka_bootstrap):
    """PredictTask has stored the whole stream and waits for new messages when the broker goes
    away: the run fails with one line and writes no report, rather than ending as if the stream
    were drained. With the broker back, a new run takes every message sent since, exactly once."""
    project = fault_project
    group = project.config["stream"]["group"]
    project.luigi("StreamData", "--count", "1000")
    predictor = project.spawn("PredictTask", "--run-at", "outage", "--stream-timeout-ms", "300000")
    try:
        wait_for_rows(project.pg, 1000, predictor)
        # Committed right before the wait begins: the run is waiting now.
        deadline = time.monotonic() + 60
        while committed_offsets(kafka_bootstrap, group) < 1000:
            assert time.monotonic() < deadline, "the run never committed what it stored"
            time.sleep(0.2)
        kafka_broker.stop(graceful=False)
        output, _ = predictor.communicate(timeout=90)
    finally:
        if predictor.poll() is None:
            predictor.kill()
            predictor.wait()
    assert predictor.returncode != 0, output[-3000:]
    assert "vectorai error: transport kafka: cannot consume from topic" in output, output[-3000:]
    assert not list((project.data / "reports").glob("*-outage-*.json"))

    kafka_broker.restart()
    project.luigi("StreamData")  # the whole sample: the first 1000 again, and 2000 new
    drain(project, "after-outage")
    assert_exactly_once(project)


def test_postgres_stopped_during_predict(fault_project, postgres_server, kafka_bootstrap):
    project = fault_project
    group = project.config["stream"]["group"]
    project.luigi("StreamData")
    predictor = project.spawn("PredictTask", "--run-at", "db-down", "--database-connect-timeout-s", "3")
    wait_for_rows(project.pg, 500, predictor)
    postgres_server.stop(graceful=False)
    output, _ = predictor.communicate(timeout=300)
    assert predictor.returncode != 0, output[-3000:]
    assert "vectorai error: database postgresql://" in output, output[-3000:]
    assert not list((project.data / "reports").glob("*-db-down-*.json"))
    postgres_server.restart()
    # No offset was committed beyond what the database holds.
    assert committed_offsets(kafka_bootstrap, group) <= count_rows(project.pg)
    drain(project, "db-back")
    assert_exactly_once(project)


def test_poison_messages_of_every_kind(fault_project, kafka_bootstrap):
    import io

    from kafka import KafkaProducer
    from PIL import Image

    project = fault_project
    topic = project.config["stream"]["topic"]
    project.luigi("StreamData", "--count", "100")
    bomb = io.BytesIO()
    Image.new("L", (3000, 3000)).save(bomb, format="PNG")
    raw = {"content-type": "application/x-ndarray", "dtype": "uint8", "shape": "28,28"}
    poison = {
        "undecodable": (b"\x89PNG\r\n\x1a\nnot really", {"content-type": "image/png"}),
        "unknown-type": (b"hello", {"content-type": "text/plain"}),
        "bad-shape": (b"\x00" * 100, raw),
        "odd-shape": (b"\x00" * 28 * 28, {**raw, "shape": "28,28,2"}),
        "too-many-pixels": (bomb.getvalue(), {"content-type": "image/png"}),
        "too-many-bytes": (b"\x00" * 300_000, {**raw, "shape": "300000,1"}),
        "nan": (np.full((28, 28), np.nan, "<f4").tobytes(), {**raw, "dtype": "float32"}),
        "inf": (np.full((28, 28), np.inf, "<f4").tobytes(), {**raw, "dtype": "float32"}),
        "empty": (b"", raw),
        "bad-label": (b"\x00" * 784, {**raw, "label": "10"}),
        None: (b"\x00" * 784, raw),  # no id
        "nul\x00id": (b"\x00" * 784, raw),  # an id no text column can hold
    }
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, (payload, attrs) in poison.items():
        headers = [(k, v.encode()) for k, v in attrs.items()] + ([("id", key.encode())] if key else [])
        producer.send(topic, value=payload, headers=headers)
    producer.flush()
    producer.close()
    project.luigi("StreamData", "--count", "200")  # good ones after the poison too (ids 0-99 again)
    project.luigi("PredictTask", "--stream-max-message-bytes", "200000", "--stream-max-pixels", "1000000")

    assert sorted(r["message_id"].rsplit("-", 1)[0] for r in pg_rows(project.pg, "SELECT message_id FROM prediction")) \
        == [f"big-{i:08d}" for i in range(200)]
    # Each dead letter keeps the id as sent in its attributes (JSON escapes a NUL); message_id
    # only when it can be stored as it is (PostgreSQL text cannot hold NUL: never altered).
    dead = {json.loads(r["attributes"]).get("id"): r for r in pg_rows(project.pg, "SELECT * FROM dead_letter")}
    assert set(dead) == set(poison)
    assert dead["nul\x00id"]["message_id"] is None and dead["bad-label"]["message_id"] == "bad-label"
    expected_reasons = {
        "undecodable": "cannot decode image", "unknown-type": "unknown content-type", "bad-shape": "needs 784 bytes",
        "odd-shape": "unsupported shape", "too-many-pixels": "pixels exceed", "too-many-bytes": "exceeds the limit",
        "nan": "NaN or infinite", "inf": "NaN or infinite", "empty": "empty payload",
        "bad-label": "outside the model's 10 classes", None: "missing 'id'", "nul\x00id": "NUL character",
    }
    for key, reason in expected_reasons.items():
        assert reason in dead[key]["reason"], (key, dead[key]["reason"])
        assert dead[key]["position"].startswith(topic + "/0@")
        assert dead[key]["payload_size"] == len(poison[key][0])
        assert len(bytes(dead[key]["payload"])) <= 64 * 1024
    [report] = [json.loads(p.read_text()) for p in (project.data / "reports").glob("*.json")]
    assert report["dead_letters"] == len(poison) and report["predicted"] == 200
    # Acknowledged: the next run finds nothing to redeliver.
    drain(project, "after-poison", attempts=1)
