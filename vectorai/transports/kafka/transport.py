"""Apache Kafka transport (kafka-python): idempotent producer, manual-commit consumer group.

Offsets are committed only in ``acknowledge``, which callers invoke after their results are
durably stored, so a crash between consuming and storing redelivers the batch (at-least-once).
Every network wait is bounded by ``connect_timeout_ms``: an unreachable broker raises
TransportError naming the bootstrap servers instead of hanging, or instead of passing for a
drained stream.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport
from vectorai.transports.kafka.admin import ensure_topic
from vectorai.transports.kafka.connection import SOURCE, KafkaConnection
from vectorai.transports.kafka.consumer import GroupConsumer
from vectorai.transports.kafka.producer import KafkaPublisher


class KafkaTransport(Transport):
    """Publish to and consume from one Kafka topic as one consumer-group member.

    Its producer and its consumer are made when first used, after the topic is created if it
    does not exist (``create_topic``)."""

    name = SOURCE

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group: str = "vectorai-predict",
        partitions: int = 1,
        create_topic: bool = True,
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: str | None = None,
        connect_timeout_ms: int = 10000,
        **_ignored: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.create_topic = create_topic
        self.connect_timeout_ms = connect_timeout_ms
        self.connection = KafkaConnection(
            bootstrap_servers, security_protocol=security_protocol, sasl_mechanism=sasl_mechanism,
            sasl_username=sasl_username, sasl_password=sasl_password, ssl_cafile=ssl_cafile,
            connect_timeout_ms=connect_timeout_ms)
        self._topic_checked = not create_topic
        #: The producer and the consumer-group member, once used (None before, and after close).
        self.producer: KafkaPublisher | None = None
        self.consumer: GroupConsumer | None = None

    def _ensure_topic(self) -> None:
        if not self._topic_checked:
            ensure_topic(self.connection, self.topic, self.partitions)
            self._topic_checked = True

    # --- producing -------------------------------------------------------------------------

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        if self.producer is None:
            self._ensure_topic()
            self.producer = KafkaPublisher(self.connection, self.topic)
        self.producer.publish(messages)

    def flush(self, timeout_s: float) -> None:
        if self.producer is not None:
            self.producer.flush(timeout_s)

    # --- consuming -------------------------------------------------------------------------

    def _member(self) -> GroupConsumer:
        if self.consumer is None:
            self._ensure_topic()
            self.consumer = GroupConsumer(self.connection, self.topic, self.group)
        return self.consumer

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_ms`` for new ones.

        The wait is for *new* messages: while a join of this member's group is ahead or under
        way, or its partitions hold messages it has not fetched yet (a broker that is
        recovering), it keeps polling for up to REBALANCE_GRACE_S more rather than report a
        stream that is not drained as empty. A member that has joined and was given no
        partitions (the group has more members than the topic has partitions) has nothing to
        wait for. While it waits, no broker reachable for ``connect_timeout_ms`` raises
        TransportError: an outage is not a drained stream."""
        return self._member().consume_batch(max_messages, timeout_ms)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        """Commit, per partition, the offset after the highest acknowledged one.

        The commit is sent without waiting for the broker's answer (a synchronous round trip per
        batch cost a tenth of the prediction loop), and at most every COMMIT_INTERVAL_S. It is
        confirmed synchronously before this member waits for new messages and on close, which is
        where a failure is reported. Until then a crash redelivers what was acknowledged since
        the last commit, whose rows the database already has and ignores, so delivery stays
        at-least-once and rows exactly-once.

        Kafka offsets are a watermark: this also marks lower offsets of the same partition as done,
        so acknowledge every message of a batch (poison ones included) once it is dealt with.

        Messages of a partition that a rebalance has taken from this member since they were
        consumed commit nothing: the partition's new owner (perhaps this member again) reads on
        from the offset committed at the rebalance, and a commit from here could move its
        commits backwards. Their rows are stored; the redelivered copies are ignored."""
        if messages and self.consumer is not None:
            self.consumer.acknowledge(messages)

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Seek back to the lowest unacknowledged offset of each partition, to redeliver from there."""
        if self.consumer is not None:
            self.consumer.release(messages)

    @property
    def assigned_partitions(self) -> list[str]:
        """``topic/partition`` of the partitions this member holds now (empty before the first poll)."""
        return [] if self.consumer is None else self.consumer.assigned_partitions

    def close(self) -> None:
        producer, consumer = self.producer, self.consumer
        self.producer = self.consumer = None
        try:
            if consumer is not None:
                consumer.close()
        finally:
            if producer is not None:
                producer.close()
