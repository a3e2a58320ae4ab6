"""KafkaTransport against a real broker: round trip, at-least-once, group split, wire format, faults."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from services.common import free_port
from vectorai.errors import TransportError
from vectorai.messages import decode_message, encode_image
from vectorai.transports import open_transport
from vectorai.transports.base import ReceivedMessage
from vectorai.transports.kafka import KafkaTransport

pytestmark = pytest.mark.kafka


@pytest.fixture
def topic() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _transport(bootstrap: str, topic: str, **settings) -> KafkaTransport:
    return KafkaTransport(bootstrap_servers=bootstrap, topic=topic, **settings)


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(count)]


def _publish(bootstrap: str, topic: str, count: int, **settings) -> list[np.ndarray]:
    images = _images(count)
    with _transport(bootstrap, topic, **settings) as producer:
        producer.publish(encode_image(image, f"img-{i}", label=i % 10) for i, image in enumerate(images))
        producer.flush(30)
    return images


def _drain(transport: KafkaTransport, count: int, timeout_s: float = 30) -> list[ReceivedMessage]:
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        received += transport.consume_batch(count - len(received), timeout_ms=1000)
    return received


def test_published_images_come_back_decodable(kafka_bootstrap, topic):
    images = _publish(kafka_bootstrap, topic, 20)
    with open_transport("kafka", bootstrap_servers=kafka_bootstrap, topic=topic,
                        group="round-trip") as consumer:
        received = _drain(consumer, 20)
        consumer.acknowledge(received)

    assert len(received) == 20
    assert len({m.position for m in received}) == 20
    assert all(m.source == "kafka" and m.position.startswith(f"{topic}/0@") for m in received)
    for message in received:
        decoded = decode_message(message, num_classes=10)
        index = int(decoded.key.removeprefix("img-"))
        np.testing.assert_array_equal(decoded.image, images[index])
        assert decoded.label == index % 10
        assert decoded.produced_at is not None


def test_nothing_is_committed_until_acknowledged(kafka_bootstrap, topic):
    _publish(kafka_bootstrap, topic, 5)
    group = f"group-{uuid.uuid4().hex[:8]}"

    with _transport(kafka_bootstrap, topic, group=group) as first:
        unacknowledged = _drain(first, 5)
    assert len(unacknowledged) == 5

    with _transport(kafka_bootstrap, topic, group=group) as second:
        again = _drain(second, 5)
        assert sorted(m.key for m in again) == sorted(m.key for m in unacknowledged)
        # release() hands them back to this same member too.
        second.release(again)
        assert sorted(m.key for m in _drain(second, 5)) == sorted(m.key for m in again)
        second.acknowledge(again)

    with _transport(kafka_bootstrap, topic, group=group) as third:
        assert third.consume_batch(10, timeout_ms=3000) == []


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset of partition 0, as the broker has it."""
    from kafka import KafkaConsumer, TopicPartition

    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return reader.committed(TopicPartition(topic, 0))  # asks the coordinator; joins nothing
    finally:
        reader.close(autocommit=False)


def test_acknowledged_offsets_are_committed_at_most_every_interval_and_before_waiting(
        kafka_bootstrap, topic, monkeypatch):
    from vectorai.transports.kafka import consumer as kafka_consumer

    monkeypatch.setattr(kafka_consumer, "COMMIT_INTERVAL_S", 60.0)
    _publish(kafka_bootstrap, topic, 30)
    group = f"group-{uuid.uuid4().hex[:8]}"
    with _transport(kafka_bootstrap, topic, group=group) as consumer:
        first = _drain(consumer, 10)
        consumer.acknowledge(first)  # the first acknowledgement is committed at once...
        deadline = time.monotonic() + 10
        while _committed(kafka_bootstrap, group, topic) != 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _committed(kafka_bootstrap, group, topic) == 10
        for _ in range(2):  # ...the next ones within the interval wait for a later commit
            batch = consumer.consume_batch(10, timeout_ms=0)
            assert len(batch) == 10
            consumer.acknowledge(batch)
        time.sleep(1)
        assert _committed(kafka_bootstrap, group, topic) == 10
        # About to wait for new messages: everything acknowledged is committed first.
        assert consumer.consume_batch(10, timeout_ms=200) == []
        assert _committed(kafka_bootstrap, group, topic) == 30


def test_a_new_member_is_assigned_the_topic_in_its_first_join(kafka_bootstrap, topic):
    """Without the topic's metadata the first join assigns nothing and a second one follows
    (0.1 s later): the group would be in its second generation."""
    _publish(kafka_bootstrap, topic, 3)
    with _transport(kafka_bootstrap, topic, group=f"group-{uuid.uuid4().hex[:8]}") as consumer:
        assert len(_drain(consumer, 3)) == 3
        assert consumer.consumer.client.group_metadata().generation_id == 1


def test_released_messages_come_back_before_what_was_read_ahead(kafka_bootstrap, topic):
    """One poll reads several batches ahead. Releasing a batch hands it out again before anything
    after it, so acknowledging later batches can never commit past it; what was read ahead and
    never handed out comes back to the next member."""
    _publish(kafka_bootstrap, topic, 40)
    group = f"group-{uuid.uuid4().hex[:8]}"

    def offsets(messages):
        return [m.handle[1] for m in messages]

    with _transport(kafka_bootstrap, topic, group=group) as consumer:
        first = _drain(consumer, 5)
        assert consumer.consumer.ledger.read_ahead, "the poll read nothing ahead: this test tests nothing"
        consumer.release(first)
        again = consumer.consume_batch(5, timeout_ms=5000)
        assert offsets(again) == offsets(first) == [0, 1, 2, 3, 4]
        after = consumer.consume_batch(5, timeout_ms=5000)
        assert offsets(after) == [5, 6, 7, 8, 9]
        consumer.acknowledge(again + after)

    with _transport(kafka_bootstrap, topic, group=group) as second:
        rest = _drain(second, 30)
        second.acknowledge(rest)
        assert offsets(rest) == list(range(10, 40))
        assert second.consume_batch(10, timeout_ms=1000) == []


def test_two_members_of_a_group_split_partitions_without_duplicates(kafka_bootstrap, topic):
    group = f"group-{uuid.uuid4().hex[:8]}"
    members = [_transport(kafka_bootstrap, topic, group=group, partitions=2) for _ in range(2)]
    received: list[list[str]] = [[], []]
    stop = threading.Event()
    errors: list[BaseException] = []

    def consume(index: int) -> None:
        # Each member polls on its own thread, as separate processes would.
        try:
            while not stop.is_set():
                batch = members[index].consume_batch(40, timeout_ms=500)
                members[index].acknowledge(batch)
                received[index] += [m.key for m in batch]
        except BaseException as err:  # noqa: BLE001 - reported by the test thread below
            errors.append(err)

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        # Publish only once the group has settled, so no rebalance hands a partition over
        # while a member holds records from it.
        deadline = time.monotonic() + 60
        while not all(len(m.assigned_partitions) == 1 for m in members) and not errors:
            assert time.monotonic() < deadline, "the group never gave each member one partition"
            time.sleep(0.2)
        _publish(kafka_bootstrap, topic, 40, create_topic=False)
        deadline = time.monotonic() + 30
        while len(received[0]) + len(received[1]) < 40 and not errors and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
        for member in members:
            member.close()

    assert not errors, errors
    everything = received[0] + received[1]
    assert len(everything) == len(set(everything)) == 40
    assert received[0] and received[1], "one member got every message"


def test_message_from_a_plain_kafka_producer_decodes(kafka_bootstrap, topic):
    from kafka import KafkaProducer

    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    with _transport(kafka_bootstrap, topic, group="plain") as consumer:
        consumer.consume_batch(1, timeout_ms=0)  # creates the topic
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        try:
            headers = [("content-type", b"application/x-ndarray"), ("dtype", b"uint8"),
                       ("shape", b"4,4,3"), ("label", b"7"), ("produced-at", b"2024-05-01T12:00:00Z")]
            # The id as the record key only, and as a header too (the header wins).
            producer.send(topic, key=b"plain-1", value=image.tobytes(), headers=headers).get(timeout=30)
            producer.send(topic, key=b"k", value=image.tobytes(),
                          headers=[("id", b"plain-2"), *headers]).get(timeout=30)
            # A header that is not UTF-8 text does not stop the message.
            producer.send(topic, key=b"plain-3", value=image.tobytes(),
                          headers=[*headers, ("note", b"caf\xe9"), ("empty", b"")]).get(timeout=30)
        finally:
            producer.close()
        messages = _drain(consumer, 3)
        consumer.acknowledge(messages)

    # Its bytes kept as a lone surrogate (never U+FFFD, which could make two ids one).
    assert messages[2].attributes["note"] == "caf\udce9" and messages[2].attributes["empty"] == ""
    decoded = [decode_message(message, num_classes=10) for message in messages]
    assert [d.key for d in decoded] == ["plain-1", "plain-2", "plain-3"]
    for item in decoded:
        assert item.label == 7
        assert item.produced_at.year == 2024
        np.testing.assert_array_equal(item.image, image)


def test_unreachable_broker_raises_transport_error_quickly():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    message = encode_image(np.zeros((4, 4), dtype=np.uint8), "lost")
    for use in (lambda t: t.publish([message]), lambda t: t.consume_batch(1, timeout_ms=100)):
        started = time.monotonic()
        with _transport(address, "nowhere", connect_timeout_ms=2000) as transport:
            with pytest.raises(TransportError, match=address):
                use(transport)
        assert time.monotonic() - started < 10


def test_broker_outage_fails_flush_and_commit_then_redelivers(kafka_broker, topic):
    group = f"group-{uuid.uuid4().hex[:8]}"
    producer = _transport(kafka_broker.address, topic, connect_timeout_ms=3000)
    consumer = _transport(kafka_broker.address, topic, group=group, connect_timeout_ms=3000)
    try:
        producer.publish(encode_image(image, f"img-{i}") for i, image in enumerate(_images(3)))
        producer.flush(30)
        batch = _drain(consumer, 3)
        assert len(batch) == 3

        kafka_broker.stop()
        started = time.monotonic()
        producer.publish([encode_image(_images(1)[0], "during-outage")])
        with pytest.raises(TransportError, match=kafka_broker.address):
            producer.flush(3)
        consumer.acknowledge(batch)  # sent without waiting for the broker's answer...
        with pytest.raises(TransportError, match=kafka_broker.address):
            consumer.consume_batch(3, timeout_ms=1000)  # ...and confirmed before any wait: fails
        assert time.monotonic() - started < 20
    finally:
        producer.close()
        consumer.close()

    kafka_broker.restart()
    with _transport(kafka_broker.address, topic, group=group) as consumer:
        # The first member vanished without leaving, so this one waits out its session.
        again = _drain(consumer, 3, timeout_s=60)
        consumer.acknowledge(again)
    assert sorted(m.key for m in again) == sorted(m.key for m in batch)


def test_broker_outage_while_waiting_for_messages_fails_the_wait(kafka_broker, topic):
    """Waiting for new messages when the broker goes away raises TransportError soon after
    connect_timeout_ms, instead of returning nothing once the wait is over, which the predict
    loop would take for a drained stream."""
    group = f"group-{uuid.uuid4().hex[:8]}"
    _publish(kafka_broker.address, topic, 3)
    with _transport(kafka_broker.address, topic, group=group, connect_timeout_ms=3000) as consumer:
        consumer.acknowledge(_drain(consumer, 3))
        assert consumer.consume_batch(3, timeout_ms=500) == []  # drained, and all of it committed
        kafka_broker.stop()
        started = time.monotonic()
        with pytest.raises(TransportError, match=f"cannot consume from topic {topic} "
                                                 f"\\(bootstrap servers {kafka_broker.address}\\)"):
            consumer.consume_batch(3, timeout_ms=120_000)
        waited = time.monotonic() - started
    assert waited < 30, f"the outage was noticed after {waited:.1f}s"

    kafka_broker.restart()
    _publish(kafka_broker.address, topic, 2)
    with _transport(kafka_broker.address, topic, group=group) as consumer:
        # The member that saw the outage never left the group, so this one waits out its session.
        after = _drain(consumer, 2, timeout_s=60)
        consumer.acknowledge(after)
    assert [m.position for m in after] == [f"{topic}/0@3", f"{topic}/0@4"]
