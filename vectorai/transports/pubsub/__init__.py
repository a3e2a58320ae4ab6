"""The Google Cloud Pub/Sub transport, one module per part of the client it drives.

- ``transport``: ``PubSubTransport``, the ``Transport`` the factory opens as ``pubsub``;
- ``publisher`` and ``subscriber``: sending with confirmation on flush, and synchronous pull with
  acknowledgements and releases;
- ``leases``: the thread that extends the ack deadline of what was handed out and not yet
  acknowledged or released;
- ``resources``: checking, or creating, the topic and the subscription;
- ``connection``: the settings and clients they share, and admin calls bounded by a timeout.

Everything logs to the ``vectorai.transports.pubsub`` logger.
"""

from vectorai.transports.pubsub.connection import PUBLIC_ENDPOINT, SOURCE, PubSubConnection, check_settings
from vectorai.transports.pubsub.leases import LEASE_RENEW_AT, LEASE_RETRY_S, LeaseKeeper
from vectorai.transports.pubsub.publisher import PubSubPublisher
from vectorai.transports.pubsub.resources import ensure_resources
from vectorai.transports.pubsub.subscriber import ACK_CHUNK, PubSubSubscriber
from vectorai.transports.pubsub.transport import PubSubTransport

__all__ = ["PubSubTransport", "PubSubConnection", "PubSubPublisher", "PubSubSubscriber", "LeaseKeeper",
           "ensure_resources", "check_settings", "ACK_CHUNK", "PUBLIC_ENDPOINT", "LEASE_RENEW_AT",
           "LEASE_RETRY_S", "SOURCE"]
