"""The topic and the subscription a transport uses: checked, or created when missing.

Creating the subscription before anything is published matters: Pub/Sub drops messages sent to a
topic with none."""

from __future__ import annotations

import logging

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from vectorai.errors import ConfigError
from vectorai.transports.pubsub.connection import PubSubConnection

# One logger for the whole package, named as the module was before it became one.
log = logging.getLogger(__package__)


def ensure_resources(connection: PubSubConnection, publisher: pubsub_v1.PublisherClient,
                     subscriber: pubsub_v1.SubscriberClient, *, create_missing: bool,
                     ack_deadline_s: int) -> int:
    """Check (or create) the topic and the subscription; return the ack deadline leases are to be
    timed on: the subscription's own when it could be read, else ``ack_deadline_s``."""
    ensure_topic(connection, publisher, create_missing=create_missing)
    return ensure_subscription(connection, subscriber, create_missing=create_missing,
                               ack_deadline_s=ack_deadline_s)


def ensure_topic(connection: PubSubConnection, publisher: pubsub_v1.PublisherClient, *,
                 create_missing: bool) -> None:
    """Check that the topic exists, or create it."""
    topic_path = connection.topic_path
    try:
        connection.connect_call(lambda t: publisher.get_topic(
            request={"topic": topic_path}, retry=None, timeout=t))
    except gexc.NotFound:
        if not create_missing:
            raise ConfigError("pubsub.topic", f"{topic_path} does not exist at {connection.endpoint} "
                              "and create_missing is off") from None
        connection.create(lambda t: publisher.create_topic(
            request={"name": topic_path}, retry=None, timeout=t))
    except gexc.PermissionDenied:
        # A least-privilege identity may publish without being allowed to read the topic.
        log.warning("cannot check Pub/Sub topic %s (permission denied); assuming it exists", topic_path)


def ensure_subscription(connection: PubSubConnection, subscriber: pubsub_v1.SubscriberClient, *,
                        create_missing: bool, ack_deadline_s: int) -> int:
    """Check that the subscription exists and is attached to the topic, or create it with
    ``ack_deadline_s``; return the ack deadline it has."""
    path = connection.subscription_path
    try:
        subscription = connection.connect_call(lambda t: subscriber.get_subscription(
            request={"subscription": path}, retry=None, timeout=t))
    except gexc.NotFound:
        if not create_missing:
            raise ConfigError("pubsub.subscription", f"{path} does not exist at "
                              f"{connection.endpoint} and create_missing is off") from None
        connection.create(lambda t: subscriber.create_subscription(
            request={"name": path, "topic": connection.topic_path,
                     "ack_deadline_seconds": ack_deadline_s}, retry=None, timeout=t))
        return ack_deadline_s
    except gexc.PermissionDenied:
        log.warning("cannot check Pub/Sub subscription %s (permission denied); assuming it exists "
                    "with an ack deadline of %ds", path, ack_deadline_s)
        return ack_deadline_s
    if subscription.topic != connection.topic_path:
        raise ConfigError("pubsub.subscription", f"{path} is attached to "
                          f"{subscription.topic}, not {connection.topic_path}")
    # 0 means the service default; the service and the emulator both report it as 10.
    actual = int(subscription.ack_deadline_seconds) or 10
    if actual != ack_deadline_s:
        # Not an error: the setting only applies to subscriptions created here, and changing a
        # shared subscription behind its owner's back would be worse.
        log.warning("Pub/Sub subscription %s has an ack deadline of %ds, not the configured "
                    "ack_deadline_s=%ds; leases are timed on its %ds", path,
                    actual, ack_deadline_s, actual)
    return actual
