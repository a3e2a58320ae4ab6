"""The Apache Kafka transport, one module per part of kafka-python it drives.

- ``transport``: ``KafkaTransport``, the ``Transport`` the factory opens as ``kafka``;
- ``producer``, ``consumer`` and ``admin``: the idempotent producer, the consumer-group member
  (waits, commits, rebalances) and the creation of the topic;
- ``ledger``: which offsets of each partition were read, handed out, acknowledged and committed;
- ``records``: records kafka-python cannot parse, read here to become dead letters;
- ``connection``: the client settings they share, and errors that name the brokers;
- ``_internals``: every use of kafka-python's private state.
"""

from vectorai.transports.kafka._internals import lenient_partition_records, missing_internals
from vectorai.transports.kafka.connection import MAX_RECORD_BYTES, SOURCE
from vectorai.transports.kafka.ledger import Claim, OffsetLedger
from vectorai.transports.kafka.records import RecoveredRecord, read_records, received_message
from vectorai.transports.kafka.transport import KafkaTransport

__all__ = ["KafkaTransport", "OffsetLedger", "Claim", "RecoveredRecord", "read_records", "received_message",
           "lenient_partition_records", "missing_internals", "MAX_RECORD_BYTES", "SOURCE"]
