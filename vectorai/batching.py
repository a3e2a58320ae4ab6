"""Batches bounded in bytes as well as in messages, on every transport.

A batch is held in memory several times over while it moves through the loop (its payloads,
the rows that point at them, the COPY stream, the next batch being decoded), so its count alone
does not bound memory: 256 messages of 8 MiB each are 2 GiB. ``BudgetedSource`` wraps any
transport and closes a batch when its next message would pass ``max_bytes`` of payload; that
message starts the following batch. A message larger than the budget on its own makes a batch
of one, so nothing is ever refused for being large (the decoder's own limit does that).

What a transport reads at once is bounded too: the local queue reads no further than the
budget (``Transport.max_read_bytes``), nor does a Pub/Sub pull at the largest payload pulled so
far, Kafka's fetches are bounded in bytes by the consumer, and after its first delivery each
transport is asked for only as many messages as would fit the budget at the largest payload of
its last delivery.
"""

from __future__ import annotations

from collections import deque

from vectorai.transports.base import ReceivedMessage, Transport
from vectorai.transports.budget import take_within_budget

#: Default ``[PredictTask] max_batch_bytes``: payload bytes per batch.
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024


def payload_size(message: ReceivedMessage) -> int:
    """The bytes a message's payload occupies (a malformed one, not bytes, still counts)."""
    payload = message.payload
    if isinstance(payload, memoryview):
        return payload.nbytes
    try:
        return len(payload)
    except TypeError:  # None or some other object: the decoder dead-letters it
        return 0


class BudgetedSource:
    """One transport's messages, handed out in batches that keep to a byte budget.

    Messages the transport delivered beyond the budget wait here, already consumed and not
    acknowledged, and open the next batch; ``take_carried`` hands them over to be released on
    failure or when the run stops early. How many messages are asked of the transport adapts to
    what it delivers: as many as would fit the budget at the largest payload of its last
    delivery, so that a stream of large images is not read 256 at a time only to wait here."""

    def __init__(self, transport: Transport, max_bytes: int) -> None:
        self.transport = transport
        self.max_bytes = max_bytes
        transport.max_read_bytes = max_bytes
        self._largest = 0  # nothing seen yet: the first delivery is as many as a batch holds
        self._carried: deque[ReceivedMessage] = deque()

    @property
    def name(self) -> str:
        return self.transport.name

    def next_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        """The next batch: messages carried from the last delivery first (without asking the
        transport for more, so a batch never waits behind messages already here), else a new
        delivery; [] when the transport has had nothing for ``timeout_ms``."""
        if max_messages <= 0:
            return []
        if not self._carried:
            ask = min(max_messages, max(1, self.max_bytes // self._largest)) if self._largest else max_messages
            delivered = self.transport.consume_batch(ask, timeout_ms)
            if not delivered:
                return []
            self._largest = max(map(payload_size, delivered))
            self._carried.extend(delivered)
        sizes = [payload_size(m) for m in self._carried]
        take = take_within_budget(sizes, max_messages, self.max_bytes)
        return [self._carried.popleft() for _ in range(take)]

    def take_carried(self) -> list[ReceivedMessage]:
        """What the transport delivered and no batch has taken yet, no longer held here."""
        carried, self._carried = list(self._carried), deque()
        return carried

    @property
    def carried(self) -> int:
        """Messages delivered and waiting for a batch."""
        return len(self._carried)
