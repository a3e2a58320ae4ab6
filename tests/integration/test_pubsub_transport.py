"""PubSubTransport against Google's Pub/Sub emulator (fixtures in tests/fixtures_pubsub.py)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from vectorai.errors import ConfigError, TransportError
from vectorai.messages import decode_message, encode_image
from vectorai.transports import open_transport
from vectorai.transports.pubsub import PubSubTransport

pytestmark = pytest.mark.pubsub


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(count)]


def _consume_all(transport: PubSubTransport, expected: int, timeout_s: float = 20.0) -> list:
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < expected and time.monotonic() < deadline:
        received.extend(transport.consume_batch(max_messages=expected - len(received), timeout_ms=2000))
    return received


def test_round_trip_keeps_payload_and_attributes(pubsub_settings):
    images = _images(25)
    outgoing = [encode_image(img, f"img-{i}", label=i % 10) for i, img in enumerate(images)]
    with open_transport("pubsub", **pubsub_settings) as transport:
        transport.publish(outgoing)
        transport.flush(timeout_s=30)
        received = _consume_all(transport, len(outgoing))
        transport.acknowledge(received)

    assert sorted(m.key for m in received) == sorted(m.key for m in outgoing)
    sent = {m.key: m for m in outgoing}
    for message in received:
        assert message.source == "pubsub"
        assert message.payload == sent[message.key].payload
        assert dict(message.attributes) == dict(sent[message.key].attributes)
        assert message.position and message.handle
        decoded = decode_message(message, num_classes=10)
        index = int(message.key.split("-")[1])
        np.testing.assert_array_equal(decoded.image, images[index])
        assert decoded.label == index % 10


def test_released_messages_come_back_until_acknowledged(pubsub_settings):
    outgoing = [encode_image(img, f"r-{i}") for i, img in enumerate(_images(5))]
    with PubSubTransport(**pubsub_settings) as transport:
        transport.publish(outgoing)
        transport.flush(timeout_s=30)
        first = _consume_all(transport, 5)
        assert len(first) == 5
        transport.release(first)

        again = _consume_all(transport, 5)
        assert sorted(m.key for m in again) == sorted(m.key for m in first)
        transport.acknowledge(again)

        assert transport.consume_batch(max_messages=5, timeout_ms=1500) == []


def test_message_from_plain_google_client_decodes(pubsub_settings, monkeypatch):
    from google.cloud import pubsub_v1

    with PubSubTransport(**pubsub_settings) as transport:  # creates topic and subscription
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_settings["emulator_host"])
        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(pubsub_settings["project"], pubsub_settings["topic"])
        png = encode_image(_images(1)[0], "unused").payload
        future = publisher.publish(topic, png, **{
            "id": "external-1", "content-type": "image/png", "label": "3",
            "produced-at": "2024-05-01T12:00:00Z"})
        future.result(timeout=30)
        publisher.stop()

        [message] = _consume_all(transport, 1)
        transport.acknowledge([message])

    assert message.key == "external-1"
    assert message.position != "external-1"  # Pub/Sub's own id is only the position
    decoded = decode_message(message, num_classes=10)
    assert decoded.image.shape == (8, 8, 3)
    assert decoded.label == 3
    assert decoded.produced_at.isoformat() == "2024-05-01T12:00:00+00:00"


@pytest.mark.parametrize("setting, value", [
    ("project", ""), ("project", "ab"), ("topic", ""), ("topic", "ab"),
    ("subscription", "x"), ("subscription", "9starts-with-digit"), ("topic", "goog-reserved"),
])
def test_bad_names_are_config_errors(pubsub_settings, setting, value):
    with pytest.raises(ConfigError) as caught:
        PubSubTransport(**{**pubsub_settings, setting: value})
    assert caught.value.setting == f"pubsub.{setting}"


def test_missing_topic_without_create_is_config_error(pubsub_settings):
    with pytest.raises(ConfigError) as caught:
        PubSubTransport(**pubsub_settings, create_missing=False)
    assert caught.value.setting == "pubsub.topic"
    assert pubsub_settings["topic"] in str(caught.value)


@pytest.fixture(params=["refused", "silent"])
def dead_endpoint(request):
    """An address where nothing answers: a closed port, or a socket that accepts but never speaks."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if request.param == "silent":
            listener.listen(8)
            yield f"127.0.0.1:{listener.getsockname()[1]}"
        else:
            port = listener.getsockname()[1]
            listener.close()
            yield f"127.0.0.1:{port}"


def test_unreachable_endpoint_fails_within_connect_timeout(dead_endpoint):
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        PubSubTransport(project="vectorai-test", topic="topic-x", subscription="sub-x",
                        emulator_host=dead_endpoint, connect_timeout_s=2.0)
    assert time.monotonic() - started < 6.0
    assert dead_endpoint in str(caught.value)


def test_empty_subscription_returns_nothing_after_timeout(pubsub_settings):
    with PubSubTransport(**pubsub_settings) as transport:
        started = time.monotonic()
        assert transport.consume_batch(max_messages=10, timeout_ms=1000) == []
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0


def test_zero_timeout_takes_only_what_is_there_and_strands_nothing(pubsub_settings):
    outgoing = [encode_image(img, f"z-{i}") for i, img in enumerate(_images(300))]
    with PubSubTransport(**pubsub_settings) as transport:
        started = time.monotonic()
        assert transport.consume_batch(max_messages=10, timeout_ms=0) == []
        assert time.monotonic() - started < 1.0  # no waiting on an empty subscription
        transport.publish(outgoing)
        transport.flush(timeout_s=30)
        received = []
        deadline = time.monotonic() + 15  # far less than the 60 s after which Pub/Sub redelivers
        while len(received) < len(outgoing) and time.monotonic() < deadline:
            batch = transport.consume_batch(max_messages=7, timeout_ms=0)
            transport.acknowledge(batch)
            received += batch
        assert sorted(m.key for m in received) == sorted(m.key for m in outgoing)
        assert transport.consume_batch(max_messages=10, timeout_ms=1000) == []
