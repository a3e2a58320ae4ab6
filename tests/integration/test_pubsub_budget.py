"""Pub/Sub pulls bounded by the batch byte budget, against the emulator: a pull asks for no more
messages than fit ``max_read_bytes`` (``PredictTask``'s ``max_batch_bytes``), so that a stream of
large images is never pulled 256 at a time. The whole-system case: 256 PNGs of 9 MB through the
emulator into PostgreSQL, PredictTask's peak RSS under 600 MiB and every image stored."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from tests.conftest import new_project, pg_rows
from tests.integration.test_memory_bytes import noise_png, run_measured
from tests.unit.helpers import tiny_onnx_model
from vectorai.transports.base import OutgoingMessage
from vectorai.transports.pubsub import PubSubTransport

pytestmark = pytest.mark.pubsub

PEAK_RSS_LIMIT_MIB = 600


def _pull_all(transport: PubSubTransport, expected: int, timeout_s: float = 30.0) -> list[list]:
    """Every delivery (one pull each) until ``expected`` messages came, acknowledged as they come."""
    pulls: list[list] = []
    deadline = time.monotonic() + timeout_s
    while sum(map(len, pulls)) < expected and time.monotonic() < deadline:
        pulled = transport.consume_batch(max_messages=256, timeout_ms=2000)
        transport.acknowledge(pulled)
        if pulled:
            pulls.append(pulled)
    return pulls


def test_no_pull_passes_the_byte_budget_and_every_message_comes_once(pubsub_settings):
    budget, size, count = 4_500, 1_000, 60
    with PubSubTransport(**pubsub_settings) as transport:
        transport.publish([OutgoingMessage(os.urandom(size), {"id": f"small-{i:02d}"}) for i in range(count)])
        transport.flush(timeout_s=30)
        transport.max_read_bytes = budget  # as the predict loop's BudgetedSource sets it
        pulls = _pull_all(transport, count)
        assert transport.consume_batch(max_messages=256, timeout_ms=1500) == []  # nothing redelivered

    received = [m.key for pulled in pulls for m in pulled]
    assert sorted(received) == [f"small-{i:02d}" for i in range(count)]  # each exactly once
    for pulled in pulls:
        total = sum(len(m.payload) for m in pulled)
        assert len(pulled) == 1 or total <= budget, f"a pull of {len(pulled)} brought {total} bytes > {budget}"
    # The first pull knows nothing of the sizes (one message, as each may be 10 MB); later ones
    # ask for as many as fit: 4 here.
    assert len(pulls[0]) == 1 and max(map(len, pulls)) == budget // size


def test_a_message_of_9_mb_is_pulled_whole(pubsub_settings):
    """gRPC's default limit on what a channel receives (4 MiB) once failed every such pull."""
    payload = os.urandom(9_000_000)
    with PubSubTransport(**pubsub_settings) as transport:
        transport.publish([OutgoingMessage(payload, {"id": "large"})])
        transport.flush(timeout_s=30)
        transport.max_read_bytes = 64 * 1024 * 1024
        [message] = _pull_all(transport, 1)[0]
    assert message.key == "large" and message.payload == payload


@pytest.fixture
def dropped_after(pubsub_settings, monkeypatch):
    """``pubsub_settings``, whose topic and subscription are deleted after the test: the emulator
    keeps every message in its heap, 2.3 GB here, for as long as it runs."""
    from google.cloud import pubsub_v1

    yield pubsub_settings
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_settings["emulator_host"])
    project = pubsub_settings["project"]
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.delete_subscription(request={"subscription": subscriber.subscription_path(
            project, pubsub_settings["subscription"])}, timeout=30)
    publisher = pubsub_v1.PublisherClient()
    publisher.delete_topic(request={"topic": publisher.topic_path(project, pubsub_settings["topic"])}, timeout=30)
    publisher.transport.close()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.system
def test_256_images_of_9_mb_through_pubsub_into_postgresql_stay_within_the_memory_bound(
        tmp_path, dropped_after, pg_database):
    pubsub_settings = dropped_after
    count = 256
    rng = np.random.default_rng(30)
    sent: dict[str, tuple[int, str]] = {}
    # Creates the topic and the subscription PredictTask will pull from, before anything is sent.
    with PubSubTransport(**pubsub_settings) as producer:
        for i in range(count):
            payload = noise_png(rng, side=1732, channels=3)  # RGB noise: 9,001,9xx bytes
            assert 9_000_000 < len(payload) < 9_100_000
            sent[f"noise-{i:03d}"] = (len(payload), hashlib.md5(payload).hexdigest())
            producer.publish([OutgoingMessage(payload, {"id": f"noise-{i:03d}", "content-type": "image/png"})])
            producer.flush(60)  # one at a time: the test process need not hold them all

    project = new_project(tmp_path / "home").use_postgres(pg_database)
    project.set("stream", transport="pubsub", topic=pubsub_settings["topic"],
                # The one setting not at its default: 9 MB is past the 8 MiB after which a
                # payload is dead-lettered, and the images are to be stored.
                max_message_bytes=10_000_000)
    project.set("pubsub", project=pubsub_settings["project"], subscription=pubsub_settings["subscription"],
                emulator_host=pubsub_settings["emulator_host"])
    tiny_onnx_model(tmp_path / "tiny.onnx", 28, 28, 1)  # PredictTask's default image_size and channels
    status, output, peak_mib = run_measured(project, "PredictTask", "--model-path", str(tmp_path / "tiny.onnx"),
                                            "--require-stream", "false")
    assert status == 0 and ":)" in output, output[-6000:]

    stored = {row["message_id"]: (row["size"], row["digest"]) for row in pg_rows(
        pg_database, "SELECT message_id, length(image) AS size, md5(image) AS digest FROM prediction")}
    assert stored == sent  # every image, once, byte for byte
    [report_path] = (project.data / "reports").glob("predict-*.json")
    report = json.loads(report_path.read_text())
    assert (report["consumed"], report["predicted"], report["dead_letters"]) == (count, count, 0)
    print(f"PredictTask peak RSS: {peak_mib:.0f} MiB for {count} x {len(payload) / 1e6:.2f} MB "
          f"in {report['batches']} batches, {report['seconds']} s")
    assert peak_mib < PEAK_RSS_LIMIT_MIB, f"PredictTask's peak RSS was {peak_mib:.0f} MiB"
