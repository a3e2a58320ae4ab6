"""The transport's subscriber: synchronous pull, acknowledgements, releases and leases.

The message id rows are keyed on is the ``id`` attribute of the wire format (``vectorai.messages``),
not Pub/Sub's own message id, which is kept as ``position``.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from vectorai.errors import TransportError
from vectorai.transports.base import ReceivedMessage
from vectorai.transports.pubsub.connection import SOURCE, PubSubConnection
from vectorai.transports.pubsub.leases import LeaseKeeper

#: The largest message Pub/Sub accepts (data and attributes, 10 MB): what a pull must assume of
#: messages it has not seen yet, as the service has no way to bound a pull in bytes.
MAX_MESSAGE_BYTES = 10_000_000

#: Acknowledge / modify-deadline requests carry at most this many ack ids (the request size limit
#: is 512 KiB; Google's own streaming client uses the same batch size).
ACK_CHUNK = 1000


class PubSubSubscriber:
    """Pulls from the connection's subscription and keeps what it handed out leased until it is
    acknowledged or released (for at most ``max_lease_s``; 0 never extends)."""

    def __init__(self, connection: PubSubConnection, client: pubsub_v1.SubscriberClient, *,
                 lease_deadline_s: int, max_lease_s: float) -> None:
        self.connection = connection
        self.client: pubsub_v1.SubscriberClient | None = client  # None once closed
        #: The ack deadline leases are timed on and extended by.
        self.lease_deadline_s = lease_deadline_s
        self.max_lease_s = max_lease_s
        self._leases: LeaseKeeper | None = None  # started with the first lease
        #: The largest payload pulled so far, at least 1 once anything was (0: nothing yet): it
        #: sizes the pulls that follow.
        self.largest_payload = 0

    def consume_batch(self, max_messages: int, timeout_ms: int,
                      max_bytes: int | None = None) -> list[ReceivedMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_ms`` for the first; [] when none.
        With ``max_bytes``, asks for no more than would fit it (``pull_size``)."""
        if max_messages <= 0:
            return []
        max_messages = pull_size(max_messages, max_bytes, self.largest_payload)
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        last_error: Exception | None = None
        # With no time to wait, ask for only what is there now. A pull that the client abandons
        # at its deadline can still take messages off the subscription on the server, and they
        # only come back after ack_deadline_s: short client deadlines would strand messages.
        immediately = timeout_ms <= 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                # retry=None: the loop below owns retrying, so a call never outlives the deadline.
                response = self.client.pull(
                    request={"subscription": self.connection.subscription_path, "max_messages": max_messages,
                             **({"return_immediately": True} if immediately else {})},
                    retry=None, timeout=10.0 if immediately else max(remaining, 0.1))
                last_error = None
                # The raw protobuf: proto-plus wraps every field access in Python, which cost
                # more per message than classifying it.
                received = type(response).pb(response).received_messages
                if received:
                    messages = [_received(m) for m in received]
                    self._lease(messages)
                    self.largest_payload = max(self.largest_payload, 1, *(len(m.payload) for m in messages))
                    return messages
            except gexc.DeadlineExceeded:
                last_error = None  # a long pull with nothing to deliver ends this way
            except gexc.NotFound as err:
                raise TransportError(SOURCE, f"subscription {self.connection.subscription_path} "
                                     f"is gone: {err}") from None
            except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Aborted) as err:
                last_error = err
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            except gexc.GoogleAPICallError as err:
                raise TransportError(SOURCE, f"pull from {self.connection.where} failed: {err}") from None
            if time.monotonic() >= deadline:
                if last_error is not None:
                    raise TransportError(SOURCE, f"pull from {self.connection.where} failed: {last_error}")
                return []

    def _lease(self, messages: list[ReceivedMessage]) -> None:
        if self.max_lease_s <= 0:
            return
        if self._leases is None:
            subscription = self.connection.subscription_path.rsplit("/", 1)[-1]
            self._leases = LeaseKeeper(self._extend, self.lease_deadline_s, self.max_lease_s,
                                       where=self.connection.where,
                                       thread_name=f"pubsub-lease-{subscription}")
        self._leases.add([m.handle for m in messages])

    def _extend(self, ack_ids: list[str], seconds: int) -> None:
        for chunk in _chunks(ack_ids):
            self.client.modify_ack_deadline(
                request={"subscription": self.connection.subscription_path, "ack_ids": chunk,
                         "ack_deadline_seconds": seconds},
                timeout=self.connection.connect_timeout_s)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        """Tell Pub/Sub that ``messages`` are done with, so they are never delivered again."""
        ack_ids = [m.handle for m in messages]
        if self._leases is not None:
            # Before the call: extending an id already acknowledged is harmless, so no need to
            # wait for an extension in progress.
            self._leases.discard(ack_ids)
        for chunk in _chunks(ack_ids):
            self._call("acknowledge", lambda: self.client.acknowledge(
                request={"subscription": self.connection.subscription_path, "ack_ids": chunk},
                timeout=self.connection.connect_timeout_s))

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Hand ``messages`` back for redelivery now rather than after their deadline."""
        ack_ids = [m.handle for m in messages]
        if self._leases is not None:
            # An extension of these ids still under way would undo the zero deadline below.
            self._leases.discard(ack_ids, wait_for_extension=True)
        # A zero ack deadline tells Pub/Sub to redeliver now instead of after the deadline.
        for chunk in _chunks(ack_ids):
            self._call("release", lambda: self.client.modify_ack_deadline(
                request={"subscription": self.connection.subscription_path, "ack_ids": chunk,
                         "ack_deadline_seconds": 0},
                timeout=self.connection.connect_timeout_s))

    def _call(self, what: str, call) -> None:
        try:
            call()
        except gexc.GoogleAPICallError as err:
            raise TransportError(SOURCE, f"{what} on {self.connection.where} failed: {err}") from None

    def close(self) -> None:
        """Stop extending leases, then close the client."""
        leases, self._leases = self._leases, None
        if leases is not None:
            # Before the client closes under it. Messages still leased are not released: they
            # come back once their deadline runs out, as after a crash.
            leases.stop()
        client, self.client = self.client, None
        if client is not None:
            client.close()


def pull_size(max_messages: int, max_bytes: int | None, largest_payload: int) -> int:
    """How many messages one pull asks for: at most ``max_messages``, and with ``max_bytes`` no
    more than fit it at the largest payload pulled so far, or before any at ``MAX_MESSAGE_BYTES``
    (at least one). A pull's messages all arrive in one response that the process holds at
    once, so asking for 256 when each may be 9 MB would be 2.3 GB however batches are cut later.
    The largest so far never shrinks, so after one large message the pulls stay small: only a
    message larger than every one pulled before can take a pull past the budget."""
    if max_bytes is None:
        return max_messages
    per_message = largest_payload or MAX_MESSAGE_BYTES
    return max(1, min(max_messages, max_bytes // per_message))


def _received(received) -> ReceivedMessage:
    message = received.message
    return ReceivedMessage(source=SOURCE, payload=bytes(message.data),
                           attributes=dict(message.attributes), position=message.message_id,
                           handle=received.ack_id)


def _chunks(items: list, size: int = ACK_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
