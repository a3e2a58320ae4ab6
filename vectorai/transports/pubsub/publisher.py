"""The transport's publisher: the client batches and sends in the background, ``flush`` confirms."""

from __future__ import annotations

import concurrent.futures
from typing import Iterable

from google.cloud import pubsub_v1

from vectorai.errors import TransportError
from vectorai.transports.base import OutgoingMessage
from vectorai.transports.pubsub.connection import SOURCE, PubSubConnection


class PubSubPublisher:
    """Sends messages to the connection's topic and confirms them on ``flush``."""

    def __init__(self, connection: PubSubConnection, client: pubsub_v1.PublisherClient) -> None:
        self.connection = connection
        self.client: pubsub_v1.PublisherClient | None = client  # None once closed
        self._futures: list[concurrent.futures.Future] = []  # sent and not yet confirmed

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        """Queue ``messages``, with their attributes as Pub/Sub attributes."""
        for message in messages:
            # Attributes go as keyword arguments; the client batches and sends in the background.
            self._futures.append(self.client.publish(
                self.connection.topic_path, bytes(message.payload),
                **{str(k): str(v) for k, v in message.attributes.items()}))

    def flush(self, timeout_s: float) -> None:
        """Wait for Pub/Sub to confirm every message sent, or raise TransportError."""
        futures, self._futures = self._futures, []
        if not futures:
            return
        target = f"{self.connection.topic_path} at {self.connection.endpoint}"
        done, pending = concurrent.futures.wait(futures, timeout=timeout_s)
        if pending:
            self._futures = list(pending)  # a later flush may still see them confirmed
            raise TransportError(SOURCE, f"{len(pending)} of {len(futures)} messages to "
                                 f"{target} not confirmed within {timeout_s:g}s")
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            raise TransportError(SOURCE, f"{len(failed)} of {len(futures)} messages to {target} "
                                 f"failed; first error: {failed[0]}")

    def close(self) -> None:
        """Send what is batched and close the client; unflushed messages may still be lost."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.stop()
        except RuntimeError:
            pass
        client.transport.close()
