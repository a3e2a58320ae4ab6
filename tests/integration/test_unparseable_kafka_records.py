"""A Kafka record that kafka-python itself cannot parse (a header name that is not UTF-8, as kcat,
librdkafka, Go or Java producers may send) is a dead letter naming its topic, partition and
offset, and the stream goes on past it: PredictTask exits 0, the good messages around it are
stored, and a rerun stores nothing new. Produced with kcat into the real test broker."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import new_project
from tests.unit.helpers import tiny_onnx_model
from vectorai.messages import encode_image

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="session")
def kcat() -> str:
    """The kcat command (Debian's ``kcat`` package, installed with apt when missing)."""
    path = shutil.which("kcat")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "kcat"], capture_output=True, timeout=300,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which("kcat")
    if path is None:
        reason = "kcat is not installed and cannot be installed with apt here"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def test_a_header_name_kafka_python_cannot_parse_is_a_dead_letter_and_the_stream_goes_on(
        kafka_bootstrap, kcat, tmp_path):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"unparseable-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])  # the test broker creates no topic by itself
    admin.close()
    rng = np.random.default_rng(3)
    good = [encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"good-{i}") for i in range(2)]

    def send_good(message) -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        headers = [(name, value.encode()) for name, value in message.attributes.items() if name != "id"]
        producer.send(topic, key=message.attributes["id"].encode(), value=message.payload, headers=headers)
        producer.flush(30)
        producer.close()

    image = tmp_path / "d.png"
    image.write_bytes(good[0].payload)
    send_good(good[0])
    # The reproduction: kcat -P -t T -k bad -H $'\xff\xfe=v' -H content-type=image/png d.png
    subprocess.run([kcat.encode(), b"-P", b"-b", kafka_bootstrap.encode(), b"-t", topic.encode(), b"-k", b"bad",
                    b"-H", b"\xff\xfe=v", b"-H", b"content-type=image/png", str(image).encode()],
                   check=True, timeout=60, capture_output=True)
    send_good(good[1])

    model = tmp_path / "tiny.onnx"
    tiny_onnx_model(model)
    project = new_project(tmp_path / "home")
    project.set("stream", transport="kafka", topic=topic, group=f"g-{topic}")
    project.set("kafka", bootstrap_servers=kafka_bootstrap, create_topic="false")

    def predict(run: str) -> dict:
        proc = project.luigi("PredictTask", "--require-stream", "false", "--model-path", str(model),
                             "--image-size", "8", "--run-at", run, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        [report] = (project.data / "reports").glob(f"*-{run}-*.json")
        return json.loads(report.read_text())

    first = predict("first")
    with sqlite3.connect(project.data / "predictions.sqlite") as db:
        stored = sorted(row[0] for row in db.execute("SELECT message_id FROM prediction"))
        dead = db.execute("SELECT position, reason, attributes, payload FROM dead_letter").fetchall()
    assert stored == ["good-0", "good-1"]
    assert len(dead) == 1
    position, reason, attributes, payload = dead[0]
    assert position == f"{topic}/0@1"
    assert reason == (f"the Kafka client cannot parse record {topic}/0@1: header name b'\\xff\\xfe' is not "
                      f"UTF-8 text"), reason
    # What could be reached of it is kept: the key as id, the other header, the PNG.
    assert json.loads(attributes) == {"\udcff\udcfe": "v", "content-type": "image/png", "id": "bad"}
    assert payload == good[0].payload
    assert (first["consumed"], first["predicted"], first["dead_letters"]) == (3, 2, 1)

    second = predict("second")
    assert second["consumed"] == 0, second
    with sqlite3.connect(project.data / "predictions.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM prediction").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0] == 1


def test_records_mutated_at_the_wire_are_each_predicted_or_dead_lettered_and_a_redelivery_stores_nothing_new(
        kafka_bootstrap, kcat, tmp_path):
    """Keys, header names, header values and header counts drawn at random (a fixed seed), sent
    with kcat one record per batch: every record is a row or a dead letter, the run exits 0, and
    a second run in another consumer group (every record again) stores nothing new."""
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"wire-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    rng = np.random.default_rng(21)

    def some_bytes(low: int, high: int, without: bytes = b"\x00") -> bytes:
        # argv cannot hold NUL, and kcat splits a header at its first '='.
        data = bytes(rng.integers(0, 256, int(rng.integers(low, high + 1)), dtype=np.uint8))
        for byte in without:
            data = data.replace(bytes([byte]), b"")
        return data or b"x"

    bad_names: set[int] = set()
    good_ids: set[str] = set()
    for offset in range(40):
        message = encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"wire-{offset}", label=1)
        key = message.attributes["id"].encode()
        headers = [(b"content-type", b"image/png"), (b"label", b"1")]
        payload = message.payload
        kind = offset % 4
        if kind == 1:  # any key bytes
            key = some_bytes(1, 12)
        elif kind == 2:  # any header names and values, any number of them
            headers = [(some_bytes(1, 6, b"\x00="), some_bytes(0, 8)) for _ in range(int(rng.integers(0, 5)))]
            headers += [(b"content-type", b"image/png")] if rng.integers(0, 2) else []
        elif kind == 3:  # a name that is not UTF-8 among good headers, sometimes garbage for a payload
            headers.insert(int(rng.integers(0, len(headers) + 1)), (b"\xc3\x28" + some_bytes(0, 4, b"\x00="), b"v"))
            payload = payload if rng.integers(0, 2) else some_bytes(1, 64)
        if any(not _is_utf8(name) for name, _ in headers):
            bad_names.add(offset)
        elif kind == 0:
            good_ids.add(message.attributes["id"])
        (tmp_path / "payload").write_bytes(payload)
        argv = [kcat.encode(), b"-P", b"-b", kafka_bootstrap.encode(), b"-t", topic.encode(), b"-k", key]
        for name, value in headers:
            argv += [b"-H", name + b"=" + value]
        subprocess.run(argv + [str(tmp_path / "payload").encode()], check=True, timeout=60, capture_output=True)

    model = tmp_path / "tiny.onnx"
    tiny_onnx_model(model)
    project = new_project(tmp_path / "home")
    project.set("kafka", bootstrap_servers=kafka_bootstrap, create_topic="false")

    def predict(group: str) -> dict:
        project.set("stream", transport="kafka", topic=topic, group=group)
        proc = project.luigi("PredictTask", "--require-stream", "false", "--model-path", str(model),
                             "--image-size", "8", "--run-at", group, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        [report] = (project.data / "reports").glob(f"*-{group}-*.json")
        return json.loads(report.read_text())

    first = predict("first")
    assert first["consumed"] == 40
    assert first["predicted"] + first["already_predicted"] + first["duplicates"] + first["dead_letters"] == 40
    with sqlite3.connect(project.data / "predictions.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT message_id FROM prediction")}
        dead = dict(db.execute("SELECT position, reason FROM dead_letter").fetchall())
        counts = [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("prediction", "dead_letter")]
    assert good_ids <= stored and counts == [first["predicted"], first["dead_letters"]]
    assert bad_names and all(dead[f"{topic}/0@{offset}"].startswith(f"the Kafka client cannot parse record "
                                                                    f"{topic}/0@{offset}: header name b")
                             for offset in bad_names)

    again = predict("second")  # another group: every record is delivered again
    assert again["consumed"] == 40 and again["predicted"] == 0
    with sqlite3.connect(project.data / "predictions.sqlite") as db:
        assert [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("prediction", "dead_letter")] == counts


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _corrupt_the_compressed_batch(segment: Path) -> tuple[int, int]:
    """Break the gzip trailer of the one gzip batch in a partition's log segment, as a faulty
    producer or disk would (the CRC made right again, so only decompressing fails): the broker
    serves the bytes as they are. Its first and last offsets."""
    from kafka.record.util import calc_crc32c

    data = bytearray(segment.read_bytes())
    pos = 0
    while pos + 61 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        attributes, last_delta = struct.unpack_from(">hi", data, pos + 21)
        if attributes & 0x07 == 1:
            data[end - 8:end] = b"\x00" * 8
            struct.pack_into(">I", data, pos + 17, calc_crc32c(memoryview(data)[pos + 21:end]))
            with segment.open("r+b") as file:
                file.seek(pos)
                file.write(data[pos:end])
            return base_offset, base_offset + last_delta
        pos = end
    raise AssertionError(f"no gzip batch in {segment}")


def test_a_compressed_batch_that_cannot_be_decompressed_is_one_dead_letter_naming_all_its_offsets(
        kafka_broker, tmp_path):
    """The broker serves a gzip batch of four records that cannot be decompressed between good
    ones: one dead letter whose position names all four offsets, every offset counted in the
    report (consumed 8 = 4 predicted + 4 dead-lettered), and a run in another group (every
    record again) stores nothing new."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from vectorai import db as results_db
    from vectorai.inference import OnnxClassifier
    from vectorai.predict import run_predictions
    from vectorai.transports import open_transport

    bootstrap = kafka_broker.address
    topic = f"gzip-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    rng = np.random.default_rng(5)
    good = [encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"good-{i}") for i in range(8)]

    def send(messages, **settings) -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1000, **settings)
        for message in messages:
            headers = [(name, value.encode()) for name, value in message.attributes.items() if name != "id"]
            producer.send(topic, key=message.attributes["id"].encode(), value=message.payload, headers=headers)
        producer.flush(30)
        producer.close()

    send(good[:2])
    send(good[2:6], compression_type="gzip")  # one batch: offsets 2..5
    send(good[6:])
    segment = kafka_broker.server.workdir / "data" / f"{topic}-0" / f"{0:020d}.log"
    assert _corrupt_the_compressed_batch(segment) == (2, 5)

    tiny_onnx_model(tmp_path / "tiny.onnx")
    classifier = OnnxClassifier(tmp_path / "tiny.onnx")
    database = results_db.connect(results_db.sqlite_url(tmp_path / "results.sqlite"))
    try:
        reports = []
        for group in ("first", "again"):
            with open_transport("kafka", bootstrap_servers=bootstrap, topic=topic, group=f"{group}-{topic}",
                                create_topic=False) as source:
                reports.append(run_predictions([source], classifier, database, batch_size=4, timeout_ms=2000))
        stored = sorted(p.message_id for p in results_db.Prediction.select())
        dead = [(d.position, d.reason) for d in results_db.DeadLetter.select()]
    finally:
        database.close()
    assert stored == ["good-0", "good-1", "good-6", "good-7"]
    [(position, reason)] = dead
    assert position == f"{topic}/0@2..5"
    assert reason.startswith(f"the Kafka client cannot parse records {topic}/0@2..5: record batch of offsets "
                             f"2..5 cannot be read: "), reason
    first, again = (report.to_dict() for report in reports)
    assert (first["consumed"], first["predicted"], first["dead_letters"]) == (8, 4, 4)
    assert first["by_source"]["kafka"]["consumed"] == 8
    assert (again["consumed"], again["predicted"], again["already_predicted"], again["dead_letters"]) == (8, 0, 4, 4)
