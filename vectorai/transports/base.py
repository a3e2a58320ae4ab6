"""The one interface every transport (local, Kafka, Pub/Sub) implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class OutgoingMessage:
    """What a producer sends: the payload bytes and string attributes (Kafka headers, Pub/Sub
    attributes, or the local queue's JSON envelope). The message id is ``attributes['id']``
    and is also used as the Kafka key / Pub/Sub ordering-free attribute."""

    payload: bytes
    attributes: Mapping[str, str]

    @property
    def key(self) -> str | None:
        return self.attributes.get("id")


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as consumed. ``position`` says where it came from (``topic/partition@offset`` for
    Kafka, Pub/Sub's own message id, ``topic@offset`` for the local queue); ``handle`` is whatever the
    transport needs to acknowledge it and is opaque to callers."""

    source: str
    payload: bytes
    attributes: Mapping[str, str]
    position: str
    handle: object = field(default=None, compare=False, repr=False)
    #: Why the transport could not read this message as sent (a Kafka record its client cannot
    #: parse), or None. The decoder makes a message with a problem a dead letter.
    problem: str | None = None
    #: How many of the transport's messages this one stands for: more than one only for a
    #: message with a problem that covers several (a Kafka record batch that could not be read
    #: is one dead letter for all its offsets, which ``position`` names as ``first..last``).
    stands_for: int = 1

    @property
    def key(self) -> str | None:
        return self.attributes.get("id")


class Transport(abc.ABC):
    """Publish / flush / consume a batch / acknowledge / close.

    Delivery is at-least-once: a consumed message is delivered again (to this group or
    subscription) until ``acknowledge`` is called for it, so callers acknowledge only after
    their results are durably committed.
    """

    #: Short name used in rows and reports ("local", "kafka", "pubsub").
    name: str = "transport"
    #: A hint: ``consume_batch`` may stop reading once the payloads it has read would pass this
    #: many bytes (always returning at least one message). The predict loop sets it to its batch
    #: budget; transports that read a bounded amount anyway (Kafka's fetches) ignore it.
    max_read_bytes: int | None = None

    @abc.abstractmethod
    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        """Queue messages for sending; may return before the broker has them."""

    @abc.abstractmethod
    def flush(self, timeout_s: float) -> None:
        """Block until every published message is confirmed by the broker, or raise TransportError."""

    @abc.abstractmethod
    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        """Return up to ``max_messages``, waiting at most ``timeout_ms`` for the first; [] when none."""

    @abc.abstractmethod
    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        """Mark messages as processed so they are never delivered again."""

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Give back messages that were not processed so they are redelivered soon.
        Transports whose redelivery is implicit (uncommitted offsets) need do nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; pending unflushed messages may be lost."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
