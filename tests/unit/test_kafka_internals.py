"""The private attributes of kafka-python the Kafka transport relies on are there.

kafka-python offers no public way to do a few things the transport needs (see
``vectorai/transports/kafka/_internals.py``). These tests look at a consumer and a producer made
without a broker, so an upgrade that renames one of those attributes fails here, in well under
a second and naming it, rather than deep inside the rebalance or cluster tests."""

from __future__ import annotations

import time

from vectorai.transports.kafka import missing_internals


def test_the_installed_kafka_python_has_every_private_attribute_the_transport_uses():
    started = time.monotonic()
    assert missing_internals() == [], "kafka-python lacks what vectorai/transports/kafka/_internals.py uses"
    assert time.monotonic() - started < 5


def test_a_missing_attribute_is_named_with_the_class_that_lacks_it():
    assert missing_internals(("consumer._client.connected", "consumer._no_such_attribute",
                              "producer._sender.no_such_method", "fetched_records._buffer")) == [
        "KafkaConsumer._no_such_attribute", "Sender.no_such_method"]


def test_a_method_removed_from_kafka_python_is_found(monkeypatch):
    from kafka.coordinator.base import BaseCoordinator
    from kafka.coordinator.consumer import ConsumerCoordinator

    monkeypatch.delattr(ConsumerCoordinator, "need_rejoin")
    monkeypatch.delattr(BaseCoordinator, "need_rejoin")
    assert missing_internals() == ["ConsumerCoordinator.need_rejoin"]
