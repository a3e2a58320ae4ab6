"""Every use of kafka-python's private state, in one place.

kafka-python has no public way to tell whether a consumer can reach its cluster, whether a join
of its group is under way, to read on past a record its parser rejects, or to stop a producer
whose ``close`` gave up. The functions here do it through the client's private attributes,
each listed in ``PRIVATE_PATHS``; ``missing_internals`` (run by tests/unit/test_kafka_internals.py)
names any the installed kafka-python lacks, so that an upgrade fails there in a second rather
than deep inside a rebalance or a cluster test. At run time the functions read the attributes
with ``getattr`` and do without them where they can.
"""

from __future__ import annotations

import logging

from vectorai.transports.kafka.records import read_records

log = logging.getLogger(__name__)

#: What the functions below reach through private state, as dotted paths from a consumer, a
#: producer, the record parser of a consumer's fetcher and the fetched records it is given: the
#: private attributes and what is then called on them. Keep in step with the functions.
PRIVATE_PATHS = (
    "consumer._client.connected",
    "consumer._client.cluster.brokers",
    "consumer._coordinator.coordinator_unknown",
    "consumer._coordinator.stable",
    "consumer._coordinator.need_rejoin",
    "consumer._coordinator._join_task",
    "consumer._fetcher.PartitionRecords._unpack_records",
    "partition_records.next_fetch_offset",
    "partition_records.records_read",
    "partition_records.drain",
    "fetched_records._buffer",
    "producer._sender.force_close",
    "producer._sender.join",
    "producer._closed",
)


def cluster_unreachable(consumer, group: str) -> str | None:
    """Why ``consumer`` cannot reach its cluster now, or None when it can (or cannot tell)."""
    client = getattr(consumer, "_client", None)
    coordinator = getattr(consumer, "_coordinator", None)
    if client is None or coordinator is None:
        return None
    if not any(client.connected(broker.node_id) for broker in client.cluster.brokers()):
        return "no broker connected"
    if coordinator.coordinator_unknown():
        return f"no coordinator known for group {group}"
    return None


def joining_group(consumer) -> bool:
    """Whether a join of the group is ahead of ``consumer`` or under way: it has not joined yet,
    was dropped from the group, was told of a rebalance, or a JoinGroup/SyncGroup round is in
    flight. A member that has joined and was given no partitions is not joining."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    task = getattr(coordinator, "_join_task", None)
    return (not coordinator.stable() or coordinator.need_rejoin()
            or (task is not None and not getattr(task, "is_done", True)))


def read_past_unparseable_records(consumer) -> bool:
    """Make ``consumer``'s fetcher read on past a record kafka-python cannot parse, which would
    otherwise stop it on that record for good (see ``records``). The fetcher makes its record
    parsers through ``self.PartitionRecords``, so an attribute of this one fetcher replaces the
    class for this consumer alone. Whether it could."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(type(fetcher), "PartitionRecords", None)
    if base is None:
        log.warning("kafka-python's fetcher has changed: a record it cannot parse will stop the stream")
        return False
    fetcher.PartitionRecords = lenient_partition_records(base)
    return True


def lenient_partition_records(base: type) -> type:
    """A subclass of kafka-python's ``Fetcher.PartitionRecords`` (``base``) that reads on past a
    record kafka-python cannot parse with ``records.read_records``. Set it on one consumer's
    fetcher instance, which looks the class up on itself, so no other consumer is affected."""

    class LenientPartitionRecords(base):  # type: ignore[misc, valid-type]
        def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
            raw = records._buffer  # the fetched bytes, kept before kafka-python's parser reads them
            try:
                # yield from: no Python code of ours runs per record on this, the usual, path.
                yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
                return
            except Exception as err:  # noqa: BLE001 - whatever the parser raised, read on here
                # The parser moves next_fetch_offset past each record before handing it out.
                last = self.next_fetch_offset - 1
                log.warning("kafka-python cannot parse a record of %s after offset %d (%s: %s); "
                            "reading the rest of the fetch leniently", tp, last, type(err).__name__, err)
            recovered, next_offset = read_records(bytes(raw), tp.topic, tp.partition, last)
            for record in recovered:
                self.records_read += 1
                self.next_fetch_offset = record.offset + 1
                yield record
            if next_offset is not None and next_offset > self.next_fetch_offset:
                self.next_fetch_offset = next_offset
            self.drain()

    return LenientPartitionRecords


def force_close(producer) -> None:
    """Stop a producer whose close() gave up (pending messages are lost, as close() allows).

    kafka-python 3.0.12's close() raises at its final flush while records are still pending and
    stops there, leaving its sender thread running (and __del__ raising again later)."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    producer._closed = True


def missing_internals(paths: tuple[str, ...] = PRIVATE_PATHS) -> list[str]:
    """Of ``paths``, those the installed kafka-python lacks, each as ``Class.attribute`` at the
    first step it lacks. Looks at a consumer and a producer made without a broker (a given
    ``api_version`` connects to nothing), in well under a second."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.record.memory_records import MemoryRecords

    offline = {"bootstrap_servers": "127.0.0.1:9", "api_version": (2, 8)}
    consumer = KafkaConsumer(group_id="vectorai-internals-check", enable_auto_commit=False, **offline)
    producer = KafkaProducer(**offline)
    try:
        fetched = MemoryRecords(b"")
        parser_class = getattr(getattr(consumer, "_fetcher", None), "PartitionRecords", None)
        roots = {"consumer": consumer, "producer": producer, "fetched_records": fetched,
                 "partition_records": parser_class and parser_class(0, TopicPartition("t", 0), fetched)}
        missing = []
        for path in paths:
            root, *steps = path.split(".")
            here = roots[root]
            if here is None:
                continue  # its parser class is missing, and named so already
            for step in steps:
                if not hasattr(here, step):
                    owner = here.__name__ if isinstance(here, type) else type(here).__name__
                    missing.append(f"{owner}.{step}")
                    break
                here = getattr(here, step)
        return missing
    finally:
        consumer.close(autocommit=False, timeout_ms=1000)
        producer.close(timeout=1)
