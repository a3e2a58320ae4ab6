"""Throwaway local services for tests and demos: Kafka (KRaft, from Maven Central jars),
PostgreSQL (a temporary cluster) and Google's Pub/Sub emulator. ``python -m services up``."""
