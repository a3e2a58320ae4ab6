"""Messages from another producer, written straight to a real Kafka topic with kafka-python's own
producer, next to good ones, classified into a real PostgreSQL: nothing hostile stops the stream,
every good message is stored, every bad one is a dead letter with its reason."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from tests.conftest import pg_rows
from tests.unit.helpers import tiny_onnx_model
from tests.unit.test_isolation import broken_png
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.transports.kafka import KafkaTransport

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_hostile_kafka_records_are_dead_letters_in_postgresql_and_the_rest_is_stored(
        kafka_bootstrap, pg_database, tmp_path):
    from kafka import KafkaProducer

    topic = f"hostile-{uuid.uuid4().hex[:10]}"
    tiny_onnx_model(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(7)
    good = [encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"good-{i}") for i in range(40)]

    def record(message, key: bytes | None = None, **headers: bytes):
        attributes = {name: value.encode() for name, value in message.attributes.items() if name != "id"}
        attributes.update({name.replace("_", "-"): value for name, value in headers.items()})
        return {"key": key if key is not None else message.attributes["id"].encode(), "value": message.payload,
                "headers": list(attributes.items())}

    template = encode_image(np.zeros((8, 8), np.uint8), "t")
    hostile = [
        {**record(template, b"broken"), "value": broken_png()},
        record(template, b"old-stamp", produced_at=b"0001-01-01T00:00:00+01:00"),
        record(template, b"\xff\xfe"),  # not UTF-8: would have been U+FFFD U+FFFD ...
        record(template, b"\xff\xfd"),  # ... and merged with this one
        record(template, b"x" * 256),
        record(template, b"nul\x00key"),
        record(template, b"bad-header", label=b"\xc3\x28"),
        record(template, b"weird-reason", content_type=b"application/x-ndarray; shape=\x00"),
    ]
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])  # the test broker creates no topic by itself
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for item in [record(m) for m in good[:20]] + hostile + [record(m) for m in good[20:]]:
        producer.send(topic, **item)
    producer.flush(30)
    producer.close()

    database = results_db.connect(pg_database)
    try:
        with KafkaTransport(bootstrap_servers=kafka_bootstrap, topic=topic, group="hostile") as source:
            report = run_predictions([source], OnnxClassifier(tmp_path / "tiny.onnx"), database, batch_size=16,
                                     timeout_ms=1000)
    finally:
        database.close()

    stored = pg_rows(pg_database)
    assert sorted(row["message_id"] for row in stored) == sorted(f"good-{i}" for i in range(40))
    dead = pg_rows(pg_database, "SELECT * FROM dead_letter ORDER BY position")
    assert len(dead) == len(hostile)
    by_offset = {int(row["position"].rsplit("@", 1)[1]): row for row in dead}
    reasons = [by_offset[20 + i]["reason"] for i in range(len(hostile))]
    assert reasons[0].startswith("SyntaxError: broken PNG file")
    assert reasons[1] == "produced-at '0001-01-01T00:00:00+01:00' is out of range in UTC"
    assert "is not valid UTF-8 text" in reasons[2] and "is not valid UTF-8 text" in reasons[3]
    assert "longer than 255" in reasons[4] and "NUL character" in reasons[5]
    assert "not an integer" in reasons[6] and "\x00" not in reasons[7]
    # The raw keys stay apart, escaped, in the stored attributes; no id was made up for them.
    assert by_offset[22]["message_id"] is None and by_offset[23]["message_id"] is None
    assert json.loads(by_offset[22]["attributes"])["id"] != json.loads(by_offset[23]["attributes"])["id"]
    totals = report.to_dict()
    assert totals["consumed"] == 48 and totals["predicted"] == 40 and totals["dead_letters"] == 8
    assert totals["consumed"] == totals["predicted"] + totals["already_predicted"] + totals["duplicates"] + \
        totals["dead_letters"]
