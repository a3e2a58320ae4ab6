"""Google Cloud Pub/Sub (or its emulator) behind the Transport interface, using synchronous pull.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or the
environment's own identity); nothing is configured here. With an emulator host (the
``emulator_host`` argument, else ``PUBSUB_EMULATOR_HOST``) the clients talk plain gRPC to it with
no credentials. The message id rows are keyed on is the ``id`` attribute of the wire format
(``vectorai.messages``), not Pub/Sub's own message id, which is kept as ``position``.

Messages handed out and not yet acknowledged or released are leased: a background thread
(``_LeaseKeeper``) extends their ack deadline before it runs out, so a batch that takes longer than
the subscription's deadline is not redelivered while it is still being processed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
import time
from typing import Callable, Iterable, Sequence

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
#: A lease is extended once this fraction of the ack deadline has passed since it was pulled or
#: last extended: the remaining third (at least 3 s at the 10 s minimum) covers a slow call.
LEASE_RENEW_AT = 2 / 3
#: After a failed extension, how soon the keeper tries again (the deadline may not have run out).
LEASE_RETRY_S = 1.0


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
        max_lease_s: float = 3600.0,
        **_ignored: object,
    ) -> None:
        """``ack_deadline_s`` is the deadline a subscription created here gets (an existing one
        keeps its own, which is then what leases are timed on). ``max_lease_s`` caps how long a
        message handed out is kept leased without being acknowledged or released; 0 never extends."""
        _check_name("pubsub.project", project, _PROJECT_ID,
                    "a Google Cloud project id (lowercase letters, digits, hyphens; at least 3 chars)")
        _check_name("pubsub.topic", topic, _RESOURCE_ID, _RESOURCE_RULE)
        _check_name("pubsub.subscription", subscription, _RESOURCE_ID, _RESOURCE_RULE)
        if not 10 <= int(ack_deadline_s) <= 600:
            raise ConfigError("pubsub.ack_deadline_s", f"{ack_deadline_s} is outside 10..600 seconds")
        if not connect_timeout_s > 0:
            raise ConfigError("pubsub.connect_timeout_s", f"{connect_timeout_s} must be positive")
        if not max_lease_s >= 0:
            raise ConfigError("pubsub.max_lease_s", f"{max_lease_s} must be 0 or more seconds")
        self.emulator_host = emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST") or None
        self.endpoint = self.emulator_host or PUBLIC_ENDPOINT
        self.ack_deadline_s = int(ack_deadline_s)
        #: The deadline leases are timed on and extended by: the subscription's own when it could
        #: be read (set by ``_ensure_resources``), else ``ack_deadline_s``.
        self.lease_deadline_s = self.ack_deadline_s
        self.connect_timeout_s = float(connect_timeout_s)
        self.max_lease_s = float(max_lease_s)
        self._leases: _LeaseKeeper | None = None
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
            log.warning("cannot check Pub/Sub subscription %s (permission denied); assuming it exists "
                        "with an ack deadline of %ds", self.subscription_path, self.ack_deadline_s)
        else:
            if subscription.topic != self.topic_path:
                raise ConfigError("pubsub.subscription", f"{self.subscription_path} is attached to "
                                  f"{subscription.topic}, not {self.topic_path}")
            # 0 means the service default; the service and the emulator both report it as 10.
            actual = int(subscription.ack_deadline_seconds) or 10
            if actual != self.ack_deadline_s:
                # Not an error: the setting only applies to subscriptions created here, and
                # changing a shared subscription behind its owner's back would be worse.
                log.warning("Pub/Sub subscription %s has an ack deadline of %ds, not the configured "
                            "ack_deadline_s=%ds; leases are timed on its %ds", self.subscription_path,
                            actual, self.ack_deadline_s, actual)
            self.lease_deadline_s = actual

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
                    messages = [self._received(m) for m in received]
                    self._lease(messages)
                    return messages
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

    def _lease(self, messages: list[ReceivedMessage]) -> None:
        if self.max_lease_s <= 0:
            return
        if self._leases is None:
            subscription = self.subscription_path.rsplit("/", 1)[-1]
            self._leases = _LeaseKeeper(self._extend, self.lease_deadline_s, self.max_lease_s,
                                        where=f"{self.subscription_path} at {self.endpoint}",
                                        thread_name=f"pubsub-lease-{subscription}")
        self._leases.add([m.handle for m in messages])

    def _extend(self, ack_ids: list[str], seconds: int) -> None:
        for chunk in _chunks(ack_ids):
            self._subscriber.modify_ack_deadline(
                request={"subscription": self.subscription_path, "ack_ids": chunk,
                         "ack_deadline_seconds": seconds},
                timeout=self.connect_timeout_s)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        ack_ids = [m.handle for m in messages]
        if self._leases is not None:
            # Before the call: extending an id already acknowledged is harmless, so no need to
            # wait for an extension in progress.
            self._leases.discard(ack_ids)
        for chunk in _chunks(ack_ids):
            self._call("acknowledge", lambda: self._subscriber.acknowledge(
                request={"subscription": self.subscription_path, "ack_ids": chunk},
                timeout=self.connect_timeout_s))

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        ack_ids = [m.handle for m in messages]
        if self._leases is not None:
            # An extension of these ids still under way would undo the zero deadline below.
            self._leases.discard(ack_ids, wait_for_extension=True)
        # A zero ack deadline tells Pub/Sub to redeliver now instead of after the deadline.
        for chunk in _chunks(ack_ids):
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
        leases = getattr(self, "_leases", None)
        if leases is not None:
            # Before the subscriber closes under it. Messages still leased are not released:
            # they come back once their deadline runs out, as after a crash.
            self._leases = None
            leases.stop()
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


class _LeaseKeeper:
    """Keeps the ack ids handed out and not yet acknowledged or released, and extends their ack
    deadline from a daemon thread once ``LEASE_RENEW_AT`` of it has passed, so the consuming loop
    never has to. A failed extension is logged, never raised: the worst it causes is a redelivery,
    which the database deduplicates."""

    def __init__(self, extend: Callable[[list[str], int], None], deadline_s: int, max_lease_s: float,
                 where: str, thread_name: str) -> None:
        self._extend = extend
        self._where = where  # "<subscription path> at <endpoint>", for log messages
        self._deadline_s = deadline_s
        self._renew_after_s = deadline_s * LEASE_RENEW_AT
        self._max_lease_s = max_lease_s
        # ack id -> (leased since, extend at), both time.monotonic(). Guarded by _lock, which is
        # only ever held for dictionary work, never across a call to Pub/Sub.
        self._leased: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        # Held by the thread while an extension is on the wire, and by release() so that its
        # zero deadline always lands after any extension of the same ids.
        self._extending = threading.Lock()
        self._stopped = threading.Event()
        self._failing = False  # only the keeper's thread touches it
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def add(self, ack_ids: list[str]) -> None:
        now = time.monotonic()
        lease = (now, now + self._renew_after_s)  # one tuple shared by the whole batch
        with self._lock:
            self._leased.update(dict.fromkeys(ack_ids, lease))

    def discard(self, ack_ids: Iterable[str], wait_for_extension: bool = False) -> None:
        """Stop extending ``ack_ids``; with ``wait_for_extension``, also return only once no
        extension that includes them is still on the wire."""
        with self._lock:
            pop = self._leased.pop
            for ack_id in ack_ids:
                pop(ack_id, None)
        if wait_for_extension:
            # An extension that started before the discard holds this lock until it is answered;
            # one that starts after it re-reads the leases under this lock and skips these ids.
            with self._extending:
                pass

    def stop(self) -> None:
        self._stopped.set()
        # An extension in flight ends within the client's timeout; do not hang close() on it.
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                wait_s = self._extend_due()
            except Exception:  # noqa: BLE001 - the keeper must outlive any one bad round
                log.exception("Pub/Sub lease keeper for %s failed; leases may lapse and messages be "
                              "redelivered", self._where)
                wait_s = LEASE_RETRY_S
            self._stopped.wait(wait_s)

    def _extend_due(self) -> float:
        """Extend every lease that is due; return how long to sleep until the next one is."""
        now = time.monotonic()
        due: list[str] = []
        expired: list[str] = []
        # Anything added after this scan is due no sooner than a full renew interval from now.
        next_at = now + self._renew_after_s
        with self._lock:
            for ack_id, (since, at) in self._leased.items():
                if at > now:
                    next_at = min(next_at, at)
                elif now - since >= self._max_lease_s:
                    expired.append(ack_id)
                else:
                    due.append(ack_id)
            for ack_id in expired:
                del self._leased[ack_id]
        if expired:
            # The cap exists for the caller that forgot a message: extended forever, it would
            # never reach another consumer while this process lives. An hour is far beyond any
            # batch (Google's own streaming client uses the same default).
            log.warning("stopped extending %d Pub/Sub messages from %s leased for over %.0fs without "
                        "being acknowledged or released; they will be redelivered", len(expired),
                        self._where, self._max_lease_s)
        if not due:
            return max(next_at - now, 0.0)
        with self._extending:
            with self._lock:  # released or acknowledged while we scanned: leave them alone
                due = [ack_id for ack_id in due if ack_id in self._leased]
            # Timed from before the call: Pub/Sub starts the new deadline when it receives it.
            sent = time.monotonic()
            try:
                self._extend(due, self._deadline_s)
            except Exception as err:  # noqa: BLE001 - logged; a lapsed lease is only a redelivery
                # Once per outage, not once per retry: the loop reports an unreachable service.
                log.log(logging.DEBUG if self._failing else logging.WARNING,
                        "could not extend the ack deadline of %d Pub/Sub messages from %s (retrying "
                        "every %.0fs): %s", len(due), self._where, LEASE_RETRY_S, err)
                self._failing = True
                renew_at = time.monotonic() + LEASE_RETRY_S
            else:
                if self._failing:
                    log.info("extending Pub/Sub ack deadlines on %s works again", self._where)
                    self._failing = False
                renew_at = sent + self._renew_after_s
        with self._lock:
            leased = self._leased
            for ack_id in due:
                lease = leased.get(ack_id)
                if lease is not None:
                    leased[ack_id] = (lease[0], renew_at)
        return max(min(next_at, renew_at) - time.monotonic(), 0.0)


def _check_name(setting: str, value: str, pattern: re.Pattern, expected: str) -> None:
    if not value or not value.strip():
        raise ConfigError(setting, "is empty" + (
            "; set it in the [pubsub] config or GOOGLE_CLOUD_PROJECT" if setting == "pubsub.project" else ""))
    if not pattern.fullmatch(value):
        raise ConfigError(setting, f"{value!r} is not a valid name: expected {expected}")


def _chunks(items: list, size: int = ACK_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
