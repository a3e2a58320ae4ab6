"""Google Cloud Pub/Sub (or its emulator) behind the Transport interface, using synchronous pull.

Messages handed out and not yet acknowledged or released are leased (``leases.LeaseKeeper``), so
a batch that takes longer than the subscription's ack deadline is not redelivered while it is
still being processed.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport
from vectorai.transports.pubsub.connection import SOURCE, PubSubConnection, check_settings
from vectorai.transports.pubsub.publisher import PubSubPublisher
from vectorai.transports.pubsub.resources import ensure_resources
from vectorai.transports.pubsub.subscriber import PubSubSubscriber


class PubSubTransport(Transport):
    """Publishes to ``topic`` and pulls from ``subscription`` (which is attached to ``topic``)."""

    name = SOURCE

    def __init__(
        self,
        *,
        project: str,
        topic: str,
        subscription: str,
        create_missing: bool = True,
        emulator_host: str | None = None,
        ack_deadline_s: int = 60,
        connect_timeout_s: float = 10.0,
        max_lease_s: float = 3600.0,
        **_ignored: object,
    ) -> None:
        """``ack_deadline_s`` is the deadline a subscription created here gets (an existing one
        keeps its own, which is then what leases are timed on). ``max_lease_s`` caps how long a
        message handed out is kept leased without being acknowledged or released; 0 never extends."""
        check_settings(project, topic, subscription, ack_deadline_s, connect_timeout_s, max_lease_s)
        self.connection = PubSubConnection(project=project, topic=topic, subscription=subscription,
                                           emulator_host=emulator_host, connect_timeout_s=connect_timeout_s)
        self.emulator_host = self.connection.emulator_host
        self.endpoint = self.connection.endpoint
        self.connect_timeout_s = self.connection.connect_timeout_s
        self.topic_path = self.connection.topic_path
        self.subscription_path = self.connection.subscription_path
        self.ack_deadline_s = int(ack_deadline_s)
        self.max_lease_s = float(max_lease_s)
        publisher_client, subscriber_client = self.connection.make_clients()
        self.publisher = PubSubPublisher(self.connection, publisher_client)
        self.subscriber = PubSubSubscriber(self.connection, subscriber_client,
                                           lease_deadline_s=self.ack_deadline_s, max_lease_s=self.max_lease_s)
        try:
            self.subscriber.lease_deadline_s = ensure_resources(
                self.connection, publisher_client, subscriber_client,
                create_missing=create_missing, ack_deadline_s=self.ack_deadline_s)
        except BaseException:
            self.close()
            raise

    @property
    def lease_deadline_s(self) -> int:
        """The deadline leases are timed on and extended by: the subscription's own when it could
        be read, else ``ack_deadline_s``."""
        return self.subscriber.lease_deadline_s

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        self.publisher.publish(messages)

    def flush(self, timeout_s: float) -> None:
        self.publisher.flush(timeout_s)

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        return self.subscriber.consume_batch(max_messages, timeout_ms, self.max_read_bytes)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        self.subscriber.acknowledge(messages)

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        self.subscriber.release(messages)

    def close(self) -> None:
        # The subscriber first: its lease keeper stops before anything closes under it.
        try:
            self.subscriber.close()
        finally:
            self.publisher.close()
