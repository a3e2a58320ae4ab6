"""PubSubTransport against Google's Pub/Sub emulator (fixtures in tests/fixtures_pubsub.py)."""

from __future__ import annotations

import logging
import socket
import threading
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


def _pull_for(transport: PubSubTransport, seconds: float) -> list:
    """Everything ``transport`` receives in the next ``seconds``, acknowledged as it comes."""
    received = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        batch = transport.consume_batch(max_messages=100, timeout_ms=int(min(remaining, 2.0) * 1000))
        transport.acknowledge(batch)
        received += batch
    return received


def _lease_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "vectorai.transports.pubsub"]


def test_batch_held_past_the_deadline_is_not_redelivered(pubsub_settings, caplog):
    outgoing = [encode_image(img, f"held-{i}") for i, img in enumerate(_images(20))]
    # The subscription exists with the shortest deadline the service allows (the emulator would
    # take 1 s, which would make the test unlike production); the holder is configured
    # for 60 s, so it must notice and time its leases on the subscription's 10 s instead.
    with PubSubTransport(**pubsub_settings, ack_deadline_s=10) as other:
        other.publish(outgoing)
        other.flush(timeout_s=30)
        with caplog.at_level(logging.WARNING, logger="vectorai.transports.pubsub"):
            holder = PubSubTransport(**pubsub_settings, ack_deadline_s=60)
        [mismatch] = _lease_warnings(caplog)
        assert pubsub_settings["subscription"] in mismatch
        assert "10s" in mismatch and "ack_deadline_s=60s" in mismatch
        with holder:
            held = _consume_all(holder, len(outgoing))
            assert sorted(m.key for m in held) == sorted(m.key for m in outgoing)
            pulled_at = time.monotonic()

            # Two and a half deadlines of a slow batch: another consumer gets none of it.
            assert _pull_for(other, 25.0) == []
            assert time.monotonic() - pulled_at >= 25.0

            holder.acknowledge(held)
            other.publish([encode_image(_images(1)[0], "fresh")])
            other.flush(timeout_s=30)
            # A full deadline after the acknowledgement: only the new message arrives.
            assert [m.key for m in _pull_for(other, 11.0)] == ["fresh"]
    assert len(_lease_warnings(caplog)) == 1  # no failed extensions along the way
    # Closing both transports stopped their lease keepers.
    assert not [t for t in threading.enumerate() if t.name.endswith(pubsub_settings["subscription"])]


def test_message_never_acknowledged_is_let_go_after_max_lease(pubsub_settings, caplog):
    outgoing = [encode_image(img, f"forgotten-{i}") for i, img in enumerate(_images(3))]
    with PubSubTransport(**pubsub_settings, ack_deadline_s=10) as other, \
            PubSubTransport(**pubsub_settings, ack_deadline_s=10, max_lease_s=12) as holder:
        other.publish(outgoing)
        other.flush(timeout_s=30)
        with caplog.at_level(logging.WARNING, logger="vectorai.transports.pubsub"):
            assert len(_consume_all(holder, len(outgoing))) == 3  # and never acknowledged
            pulled_at = time.monotonic()
            # Extended once (at ~7 s, to ~17 s), then no more: past 12 s the keeper lets go.
            redelivered = _consume_all(other, len(outgoing), timeout_s=30.0)
            came_back_after = time.monotonic() - pulled_at
            other.acknowledge(redelivered)
    assert sorted(m.key for m in redelivered) == sorted(m.key for m in outgoing)
    assert 12.0 < came_back_after < 25.0
    assert any(w.startswith("stopped extending 3 Pub/Sub messages") and pubsub_settings["subscription"] in w
               for w in _lease_warnings(caplog))


def test_failed_lease_extension_is_logged_not_raised(pubsub_settings, caplog, monkeypatch):
    from google.cloud import pubsub_v1

    with PubSubTransport(**pubsub_settings, ack_deadline_s=10) as transport:
        transport.publish([encode_image(_images(1)[0], "orphan")])
        transport.flush(timeout_s=30)
        held = _consume_all(transport, 1)
        # Someone deletes the subscription while the batch is being processed.
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_settings["emulator_host"])
        with pubsub_v1.SubscriberClient() as admin:
            admin.delete_subscription(request={"subscription": transport.subscription_path}, timeout=10)
        with caplog.at_level(logging.WARNING, logger="vectorai.transports.pubsub"):
            time.sleep(8.0)  # past the first extension, due ~6.7 s into the 10 s deadline
        with pytest.raises(TransportError) as caught:
            transport.acknowledge(held)  # the loop learns of it here, from its own call
    [failed] = [w for w in _lease_warnings(caplog) if w.startswith("could not extend")]
    assert pubsub_settings["subscription"] in failed and pubsub_settings["emulator_host"] in failed
    assert pubsub_settings["subscription"] in str(caught.value)
