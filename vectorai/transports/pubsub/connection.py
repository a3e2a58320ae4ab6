"""What the publisher and subscriber of one Pub/Sub transport share: its checked settings, the
two clients, the endpoint they talk to, and admin calls bounded by ``connect_timeout_s``.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or the
environment's own identity); nothing is configured here. With an emulator host (the
``emulator_host`` argument, else ``PUBSUB_EMULATOR_HOST``) the clients talk plain gRPC to it with
no credentials.
"""

from __future__ import annotations

import os
import re
import time

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from vectorai.errors import ConfigError, TransportError

SOURCE = "pubsub"
PUBLIC_ENDPOINT = "pubsub.googleapis.com:443"
# Topic and subscription ids: 3-255 chars, a letter first, then letters, digits and - _ . ~ + %;
# "goog..." is reserved. The emulator and the service both reject anything else.
_RESOURCE_ID = re.compile(r"(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
# Project ids are lowercase letters, digits and hyphens (plus "domain.com:" for legacy projects).
_PROJECT_ID = re.compile(r"([a-z0-9.\-]+:)?[a-z][a-z0-9\-]{2,62}")
_RESOURCE_RULE = "3-255 chars starting with a letter (not 'goog'), then letters, digits or - _ . ~ + %"
# Errors that mean "nothing answered (yet)" rather than "the broker refused".
_UNREACHABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)


def check_settings(project: str, topic: str, subscription: str, ack_deadline_s: int,
                   connect_timeout_s: float, max_lease_s: float) -> None:
    """Raise ConfigError naming the first ``[pubsub]`` setting that Pub/Sub would refuse."""
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


def _check_name(setting: str, value: str, pattern: re.Pattern, expected: str) -> None:
    if not value or not value.strip():
        raise ConfigError(setting, "is empty" + (
            "; set it in the [pubsub] config or GOOGLE_CLOUD_PROJECT" if setting == "pubsub.project" else ""))
    if not pattern.fullmatch(value):
        raise ConfigError(setting, f"{value!r} is not a valid name: expected {expected}")


class PubSubConnection:
    """Where one transport's clients connect (``endpoint``), the topic and subscription paths, and
    how long an admin call may wait for an answer (``connect_timeout_s``)."""

    def __init__(self, *, project: str, topic: str, subscription: str, emulator_host: str | None,
                 connect_timeout_s: float) -> None:
        self.emulator_host = emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST") or None
        self.endpoint = self.emulator_host or PUBLIC_ENDPOINT
        self.connect_timeout_s = float(connect_timeout_s)
        self.topic_path = pubsub_v1.PublisherClient.topic_path(project, topic)
        self.subscription_path = pubsub_v1.SubscriberClient.subscription_path(project, subscription)
        #: "<subscription path> at <endpoint>", for errors and log messages.
        self.where = f"{self.subscription_path} at {self.endpoint}"

    def make_clients(self) -> tuple[pubsub_v1.PublisherClient, pubsub_v1.SubscriberClient]:
        """A publisher client (batching in the background) and a subscriber client for ``endpoint``."""
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

        # No size limit on what a channel receives, as on the clients' own channels to the
        # service: gRPC's default of 4 MiB failed every pull that held a larger image, and left
        # what it had taken off the subscription stranded until its ack deadline.
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        publisher = pubsub_v1.PublisherClient(
            batch_settings=batching,
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(self.emulator_host, options=unlimited)),
        )
        subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(self.emulator_host, options=unlimited)),
        )
        return publisher, subscriber

    def connect_call(self, call):
        """Run one admin call, retrying while the endpoint does not answer, for at most
        ``connect_timeout_s`` in all; then raise TransportError naming the endpoint."""
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return call(max(remaining, 0.1))
            except _UNREACHABLE as err:
                if deadline - time.monotonic() <= 0.2:
                    raise TransportError(SOURCE, f"Pub/Sub endpoint {self.endpoint} did not answer "
                                         f"within {self.connect_timeout_s:.0f}s: {err}") from None
                time.sleep(0.2)

    def create(self, call) -> None:
        """Run one call that creates a resource; one that another process created meanwhile is fine."""
        try:
            self.connect_call(call)
        except gexc.AlreadyExists:
            pass  # another process created it between our check and now
        except gexc.GoogleAPICallError as err:
            raise TransportError(SOURCE, f"cannot create resource at {self.endpoint}: {err}") from None
