"""The transport's idempotent producer."""

from __future__ import annotations

from typing import Any, Iterable

from vectorai.transports.base import OutgoingMessage
from vectorai.transports.kafka import _internals
from vectorai.transports.kafka.connection import MAX_RECORD_BYTES, KafkaConnection


class KafkaPublisher:
    """Sends messages to one topic and confirms them on ``flush``."""

    def __init__(self, connection: KafkaConnection, topic: str) -> None:
        from kafka import KafkaProducer

        self.connection = connection
        self.topic = topic
        self._pending: list[Any] = []  # futures of records sent and not yet confirmed
        self._producer = connection.connect(
            KafkaProducer,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=MAX_RECORD_BYTES,
            max_block_ms=connection.connect_timeout_ms,
        )

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        """Queue ``messages``, keyed by their id, with their other attributes as headers."""
        from kafka.errors import KafkaError

        for message in messages:
            key = message.key.encode("utf-8") if message.key is not None else None
            # The id travels once, as the record key (consumers read it back from there).
            headers = [(name, value.encode("utf-8")) for name, value in message.attributes.items()
                       if name != "id"]
            try:
                self._pending.append(
                    self._producer.send(self.topic, value=message.payload, key=key, headers=headers))
            except KafkaError as err:
                raise self.connection.error(f"cannot send to topic {self.topic}", err) from None

    def flush(self, timeout_s: float) -> None:
        """Wait for the broker to confirm every message sent, or raise TransportError."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as err:
            # The futures stay pending: a later flush reports what became of them.
            raise self.connection.error(f"{len(self._pending)} messages to topic {self.topic} not "
                                        f"confirmed within {timeout_s:g}s", err) from None
        pending, self._pending = self._pending, []
        failed = [future for future in pending if not future.succeeded()]
        if failed:
            raise self.connection.error(f"{len(failed)} of {len(pending)} messages to topic "
                                        f"{self.topic} failed", failed[0].exception)

    def close(self) -> None:
        """Stop the producer; messages not confirmed yet may be lost."""
        from kafka.errors import KafkaError

        self._pending = []
        try:
            self._producer.close(timeout=self.connection.connect_timeout_ms / 1000)
        except KafkaError:
            _internals.force_close(self._producer)
