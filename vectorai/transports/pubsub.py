"""Google Cloud Pub/Sub (or its emulator) behind the Transport interface, using synchronous pull.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or the
environment's own identity); nothing is configured here. With an emulator host (the
``emulator_host`` argument, else ``PUBSUB_EMULATOR_HOST``) the clients talk plain gRPC to it with
no credentials. The message id rows are keyed on is the ``id`` attribute of the wire format
(``vectorai.messages``), not Pub/Sub's own message id, which is kept as ``position``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import time
from typing import Iterable, Sequence

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from vectorai.errors import ConfigError, TransportError
from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport

log = logging.getLogger(__name__)

#: Acknowledge / modify-deadline requests carry at most this many ack ids (the request size limit
#: is 512 KiB; Google's own streaming client uses the same batch size).
ACK_CHUNK = 1000
PUBLIC_ENDPOINT = "pubsub.googleapis.com:443"
# Topic and subscription ids: 3-255 chars, a letter first, then letters, digits and - _ . ~ + %;
# "goog..." is reserved. The emulator and the service both reject anything else.
_RESOURCE_ID = re.compile(r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
# Project ids are lowercase letters, digits and hyphens (plus "domain.com:" for legacy projects).
_PROJECT_ID = re.compile(r"([a-z0-9.\-]+:)?[a-z][a-z0-9\-]{2,62}")
_RESOURCE_RULE = "3-255 chars starting with a letter (not 'goog'), then letters, digits or - _ . ~ + %"
# Errors that mean "nothing answered (yet)" rather than "the broker refused".
_UNREACHABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)


class PubSubTransport(Transport):
    """Publishes to ``topic`` and pulls from ``subscription`` (which is attached to ``topic``)."""

    name = "pubsub"

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
        **_ignored: object,
    ) -> None:
        _check_name("pubsub.project", project, _PROJECT_ID,
                    "a Google Cloud project id (lowercase letters, digits, hyphens; at least 3 chars)")
        _check_name("pubsub.topic", topic, _RESOURCE_ID, _RESOURCE_RULE)
        _check_name("pubsub.subscription", subscription, _RESOURCE_ID, _RESOURCE_RULE)
        if not 10 <= int(ack_deadline_s) <= 600:
            raise ConfigError("pubsub.ack_deadline_s", f"{ack_deadline_s} is outside 10..600 seconds")
        if not connect_timeout_s > 0:
            raise ConfigError("pubsub.connect_timeout_s", f"{connect_timeout_s} must be positive")
        self.emulator_host = emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST") or None
        self.endpoint = self.emulator_host or PUBLIC_ENDPOINT
        self.ack_deadline_s = int(ack_deadline_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.topic_path = pubsub_v1.PublisherClient.topic_path(project, topic)
        self.subscription_path = pubsub_v1.SubscriberClient.subscription_path(project, subscription)
        self._futures: list[concurrent.futures.Future] = []
        self._publisher, self._subscriber = self._make_clients()
        try:
            self._ensure_resources(create_missing)
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------

    def _make_clients(self) -> tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]:
        batching = pubsub_v1.types.BatchSettings(max_messages=100, max_bytes=4_000_000, max_latency=0.05)
        if self.emulator_host is None:
            from google.auth.exceptions import DefaultCredentialsError

            try:
                return (pubsub_v1.PublisherClient(batch_settings=batching), pubsub_v1.SubscriberClient())
            except DefaultCredentialsError as err:
                raise ConfigError(
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    f"no Application Default Credentials for Pub/Sub ({err}); set it to a key file, "
                    "run `gcloud auth application-default login`, or set PUBSUB_EMULATOR_HOST",
                ) from None
        # Explicit insecure channels rather than setting PUBSUB_EMULATOR_HOST, so choosing the
        # emulator here does not redirect every other Pub/Sub client in the process.
        import grpc
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        publisher = pubsub_v1.PublisherClient(
            batch_settings=batching,
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(self.emulator_host)),
        )
        subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(self.emulator_host)),
        )
        return publisher, subscriber

    def _ensure_resources(self, create_missing: bool) -> None:
        """Check (or create) the topic and the subscription. Creating the subscription before
        anything is published matters: Pub/Sub drops messages sent to a topic with none."""
        try:
            self._connect_call(lambda t: self._publisher.get_topic(
                request={"topic": self.topic_path}, retry=None, timeout=t))
        except gexc.NotFound:
            if not create_missing:
                raise ConfigError("pubsub.topic", f"{self.topic_path} does not exist at {self.endpoint} "
                                  "and create_missing is off") from None
            self._create(lambda t: self._publisher.create_topic(
                request={"name": self.topic_path}, retry=None, timeout=t))
        except gexc.PermissionDenied:
            # A least-privilege identity may publish without being allowed to read the topic.
            log.warning("cannot check Pub/Sub topic %s (permission denied); assuming it exists",
                        self.topic_path)
        try:
            subscription = self._connect_call(lambda t: self._subscriber.get_subscription(
                request={"subscription": self.subscription_path}, retry=None, timeout=t))
        except gexc.NotFound:
            if not create_missing:
                raise ConfigError("pubsub.subscription", f"{self.subscription_path} does not exist at "
                                  f"{self.endpoint} and create_missing is off") from None
            self._create(lambda t: self._subscriber.create_subscription(
                request={"name": self.subscription_path, "topic": self.topic_path,
                         "ack_deadline_seconds": self.ack_deadline_s}, retry=None, timeout=t))
        except gexc.PermissionDenied:
            log.warning("cannot check Pub/Sub subscription %s (permission denied); assuming it exists",
                        self.subscription_path)
        else:
            if subscription.topic != self.topic_path:
                raise ConfigError("pubsub.subscription", f"{self.subscription_path} is attached to "
                                  f"{subscription.topic}, not {self.topic_path}")

    def _create(self, call) -> None:
        try:
            self._connect_call(call)
        except gexc.AlreadyExists:
            pass  # another process created it between our check and now
        except gexc.GoogleAPICallError as err:
            raise TransportError(self.name, f"cannot create resource at {self.endpoint}: {err}") from None

    def _connect_call(self, call):
        """Run one admin call, retrying while the endpoint does not answer, for at most
        ``connect_timeout_s`` in all; then raise TransportError naming the endpoint."""
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return call(max(remaining, 0.1))
            except _UNREACHABLE as err:
                if deadline - time.monotonic() <= 0.2:
                    raise TransportError(self.name, f"Pub/Sub endpoint {self.endpoint} did not answer "
                                         f"within {self.connect_timeout_s:.0f}s: {err}") from None
                time.sleep(0.2)

    # -- Transport -----------------------------------------------------------------------------

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        for message in messages:
            # Attributes go as keyword arguments; the client batches and sends in the background.
            self._futures.append(self._publisher.publish(
                self.topic_path, bytes(message.payload),
                **{str(k): str(v) for k, v in message.attributes.items()}))

    def flush(self, timeout_s: float) -> None:
        futures, self._futures = self._futures, []
        if not futures:
            return
        done, pending = concurrent.futures.wait(futures, timeout=timeout_s)
        if pending:
            self._futures = list(pending)  # a later flush may still see them confirmed
            raise TransportError(self.name, f"{len(pending)} of {len(futures)} messages to "
                                 f"{self.topic_path} at {self.endpoint} not confirmed within {timeout_s:g}s")
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            raise TransportError(self.name, f"{len(failed)} of {len(futures)} messages to {self.topic_path} "
                                 f"at {self.endpoint} failed; first error: {failed[0]}")

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
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
                response = self._subscriber.pull(
                    request={"subscription": self.subscription_path, "max_messages": max_messages,
                             **({"return_immediately": True} if immediately else {})},
                    retry=None, timeout=10.0 if immediately else max(remaining, 0.1))
                last_error = None
                # The raw protobuf: proto-plus wraps every field access in Python, which cost
                # more per message than classifying it.
                received = type(response).pb(response).received_messages
                if received:
                    return [self._received(m) for m in received]
            except gexc.DeadlineExceeded:
                last_error = None  # a long pull with nothing to deliver ends this way
            except gexc.NotFound as err:
                raise TransportError(self.name, f"subscription {self.subscription_path} is gone: {err}") from None
            except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Aborted) as err:
                last_error = err
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            except gexc.GoogleAPICallError as err:
                raise TransportError(self.name, f"pull from {self.subscription_path} at "
                                     f"{self.endpoint} failed: {err}") from None
            if time.monotonic() >= deadline:
                if last_error is not None:
                    raise TransportError(self.name, f"pull from {self.subscription_path} at "
                                         f"{self.endpoint} failed: {last_error}")
                return []

    def _received(self, received) -> ReceivedMessage:
        message = received.message
        return ReceivedMessage(source=self.name, payload=bytes(message.data),
                               attributes=dict(message.attributes), position=message.message_id,
                               handle=received.ack_id)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        for chunk in _chunks([m.handle for m in messages]):
            self._call("acknowledge", lambda: self._subscriber.acknowledge(
                request={"subscription": self.subscription_path, "ack_ids": chunk},
                timeout=self.connect_timeout_s))

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        # A zero ack deadline tells Pub/Sub to redeliver now instead of after ack_deadline_s.
        for chunk in _chunks([m.handle for m in messages]):
            self._call("release", lambda: self._subscriber.modify_ack_deadline(
                request={"subscription": self.subscription_path, "ack_ids": chunk,
                         "ack_deadline_seconds": 0},
                timeout=self.connect_timeout_s))

    def _call(self, what: str, call) -> None:
        try:
            call()
        except gexc.GoogleAPICallError as err:
            raise TransportError(self.name, f"{what} on {self.subscription_path} at "
                                 f"{self.endpoint} failed: {err}") from None

    def close(self) -> None:
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            self._publisher = None
            try:
                publisher.stop()  # sends what is batched; unflushed messages may still be lost
            except RuntimeError:
                pass
            publisher.transport.close()
        subscriber = getattr(self, "_subscriber", None)
        if subscriber is not None:
            self._subscriber = None
            subscriber.close()


def _check_name(setting: str, value: str, pattern: re.Pattern, expected: str) -> None:
    if not value or not value.strip():
        raise ConfigError(setting, "is empty" + (
            "; set it in the [pubsub] config or GOOGLE_CLOUD_PROJECT" if setting == "pubsub.project" else ""))
    if not pattern.fullmatch(value):
        raise ConfigError(setting, f"{value!r} is not a valid name: expected {expected}")


def _chunks(items: list, size: int = ACK_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
