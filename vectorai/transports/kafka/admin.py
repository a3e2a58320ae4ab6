"""Creating the transport's topic when it does not exist yet."""

from __future__ import annotations

from vectorai.transports.kafka.connection import MAX_RECORD_BYTES, KafkaConnection


def ensure_topic(connection: KafkaConnection, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists, replicated to up to
    three brokers and admitting records of up to MAX_RECORD_BYTES."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = connection.connect(KafkaAdminClient)
    try:
        if topic not in admin.list_topics():
            try:
                replication = min(3, len(admin.describe_cluster()["brokers"]) or 1)
            except (KafkaError, KeyError):
                replication = -1  # not allowed to describe the cluster: the broker's default
            try:
                admin.create_topics(
                    {topic: {"num_partitions": partitions,
                             "replication_factor": replication,
                             "configs": {"max.message.bytes": str(MAX_RECORD_BYTES)}}},
                    timeout_ms=connection.connect_timeout_ms, wait_for_metadata=True,
                )
            except TopicAlreadyExistsError:
                pass  # another producer or consumer created it first
    except KafkaError as err:
        raise connection.error(f"cannot create topic {topic}", err) from None
    finally:
        admin.close()
