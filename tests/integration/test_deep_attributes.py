"""Attributes nested 1,000 and 500 levels deep, among good messages, on the real local queue and a
real Kafka broker: the good messages are stored, the deep ones are dead letters with a reason,
and a run that reads every message again (another consumer group) fails on none of them.

On the local queue the attributes are JSON text another producer may nest at will: 1,000 levels
raised RecursionError while the row was read, 500 while its dead letter was written, both
outside the isolation boundary, so the queue stayed blocked on that offset. Kafka headers are a
flat list of byte strings: nesting can only be text inside a value, which is never parsed."""

from __future__ import annotations

import json
import sqlite3
import uuid

import numpy as np
import pytest

from tests.unit.helpers import tiny_onnx_model
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.transports import open_transport
from vectorai.transports.nesting import MAX_ATTRIBUTE_DEPTH

DEPTHS = (1000, 500)


def _good(count: int, prefix: str) -> list:
    rng = np.random.default_rng(11)
    return [encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"{prefix}-{i}") for i in range(count)]


def _runs(tmp_path, make_source, groups=("first", "again")) -> tuple[list, list, list]:
    """Two runs in two consumer groups (every message twice); the reports, stored ids and dead letters."""
    tiny_onnx_model(tmp_path / "tiny.onnx")
    classifier = OnnxClassifier(tmp_path / "tiny.onnx")
    database = results_db.connect(results_db.sqlite_url(tmp_path / "results.sqlite"))
    try:
        reports = []
        for group in groups:
            with make_source(group) as source:
                reports.append(run_predictions([source], classifier, database, batch_size=4, timeout_ms=2000))
        stored = sorted(p.message_id for p in results_db.Prediction.select())
        dead = [(d.position, d.reason, d.attributes) for d in results_db.DeadLetter.select()]
    finally:
        database.close()
    return reports, stored, dead


def test_deeply_nested_attributes_in_the_local_queue_are_dead_letters_and_the_queue_goes_on(tmp_path):
    good = _good(6, "good")
    with open_transport("local", root=tmp_path, topic="deep") as producer:
        producer.publish(good[:3])
        producer.flush(5)
    with sqlite3.connect(tmp_path / "deep.sqlite") as queue:  # another producer's rows
        for depth in DEPTHS:
            attributes = json.dumps({"id": f"deep-{depth}", "content-type": "image/png"})[:-1]
            queue.execute("INSERT INTO messages (key, attributes, payload, published_at) VALUES (?, ?, ?, 0)",
                          (f"deep-{depth}", f'{attributes}, "x": {"[" * depth}{"]" * depth}}}', good[0].payload))
    queue.close()
    with open_transport("local", root=tmp_path, topic="deep") as producer:
        producer.publish(good[3:])
        producer.flush(5)

    reports, stored, dead = _runs(
        tmp_path, lambda group: open_transport("local", root=tmp_path, topic="deep", group=group))

    assert stored == [m.attributes["id"] for m in good]
    assert [position for position, _, _ in dead] == ["deep@4", "deep@5"]
    assert {reason for _, reason, _ in dead} == {
        f"attributes nest deeper than {MAX_ATTRIBUTE_DEPTH} levels of JSON arrays and objects"}
    first, again = reports
    assert (first.consumed, first.predicted, first.dead_letters) == (8, 6, 2)
    assert (again.consumed, again.predicted, again.already_predicted) == (8, 0, 6)  # nothing new stored


def test_a_deeply_nested_value_cannot_be_published_to_the_local_queue(tmp_path):
    from vectorai.errors import TransportError
    from vectorai.transports.base import OutgoingMessage

    value: object = "x"
    for _ in range(1000):
        value = [value]
    with open_transport("local", root=tmp_path, topic="deep") as producer:
        producer.publish([OutgoingMessage(b"", {"id": "deep", "x": value})])  # type: ignore[dict-item]
        with pytest.raises(TransportError, match=f"cannot append message 'deep' .* nest deeper than "
                                                 f"{MAX_ATTRIBUTE_DEPTH} levels"):
            producer.flush(5)


@pytest.mark.kafka
def test_deeply_nested_json_in_kafka_headers_is_text_and_the_stream_goes_on(kafka_bootstrap, tmp_path):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"deep-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])  # the test broker creates no topic by itself
    admin.close()
    good = _good(6, "good")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)

    def send(message, **extra: bytes) -> None:
        headers = [(name, value.encode()) for name, value in message.attributes.items() if name != "id"]
        producer.send(topic, key=message.attributes["id"].encode(), value=message.payload,
                      headers=headers + list(extra.items()))

    for message in good[:3]:
        send(message)
    for depth in DEPTHS:  # as a label (refused) and as a header nothing reads
        send(encode_image(np.zeros((8, 8), np.uint8), f"deep-{depth}"), label=b"[" * depth + b"]" * depth,
             extra=b"{\"k\":" * depth + b"0" + b"}" * depth)
    for message in good[3:]:
        send(message)
    producer.flush(30)
    producer.close()

    reports, stored, dead = _runs(tmp_path, lambda group: open_transport(
        "kafka", bootstrap_servers=kafka_bootstrap, topic=topic, group=f"{group}-{topic}", create_topic=False))

    assert stored == [m.attributes["id"] for m in good]
    assert [position for position, _, _ in dead] == [f"{topic}/0@3", f"{topic}/0@4"]
    for (_, reason, attributes), depth in zip(dead, DEPTHS):
        assert reason == f"label '{'[' * 64}'... ({2 * depth} characters) is not an integer class index"
        kept = json.loads(attributes)  # capped, valid JSON: each value cut to 512 characters
        assert kept["id"] == f"deep-{depth}" and kept["label"].startswith("[[[")
    assert [(r.consumed, r.predicted, r.dead_letters) for r in reports] == [(8, 6, 2), (8, 0, 2)]


@pytest.mark.pubsub
def test_deeply_nested_json_in_pubsub_attributes_is_text_and_the_stream_goes_on(pubsub_settings, tmp_path):
    """Pub/Sub attributes are a flat map of strings of at most 1,024 bytes: 500 levels fit in a
    value, as text that is never parsed; 1,000 cannot be sent at all."""
    from vectorai.transports.base import OutgoingMessage

    good = _good(4, "good")
    deep = encode_image(np.zeros((8, 8), np.uint8), "deep-500")
    deep = OutgoingMessage(deep.payload, {**deep.attributes, "label": "[" * 500 + "]" * 500,
                                          "extra": '{"k":' * 200 + "0" + "}" * 200})
    with open_transport("pubsub", **pubsub_settings) as producer:
        producer.publish([*good[:2], deep, *good[2:]])
        producer.flush(30)

    reports, stored, dead = _runs(tmp_path, lambda group: open_transport("pubsub", **pubsub_settings))

    assert stored == [m.attributes["id"] for m in good]
    [(_, reason, attributes)] = dead
    assert reason == f"label '{'[' * 64}'... (1000 characters) is not an integer class index"
    assert json.loads(attributes)["id"] == "deep-500"
    assert [(r.consumed, r.predicted, r.dead_letters) for r in reports] == [(5, 4, 1), (0, 0, 0)]
