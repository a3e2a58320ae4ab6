"""Apache Kafka transport (kafka-python): idempotent producer, manual-commit consumer group.

Offsets are committed only in ``acknowledge``, which callers invoke after their results are
durably stored, so a crash between consuming and storing redelivers the batch (at-least-once).
Partitions that a rebalance takes away leave the pending commits, so a member never commits a
partition another member owns now. Every network wait is bounded by ``connect_timeout_ms``: an
unreachable broker raises TransportError naming the bootstrap servers instead of hanging, or
instead of passing for a drained stream.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from vectorai.errors import TransportError
from vectorai.redact import SecretText
from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport
from vectorai.transports.kafka_records import RecoveredRecord, lenient_partition_records

log = logging.getLogger(__name__)

SOURCE = "kafka"
#: The largest record this transport sends, and the ``max.message.bytes`` of a topic it
#: creates: Kafka's 1 MiB default would refuse the images ``[stream] max_message_bytes`` (8 MiB)
#: admits, before the consumer could even dead-letter larger ones. The consumer fetches up to
#: 16 MiB per partition, and always at least one whole record.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: How long consume_batch may overrun its timeout to finish joining the consumer group.
REBALANCE_GRACE_S = 30.0
#: Each kafka-python poll hands work to its network thread twice and waits for it (0.5-0.8 ms
#: each on the development VM, more while the cores are busy), so one poll takes up to this many
#: batches' records and consume_batch serves the next batches from them.
READ_AHEAD_BATCHES = 4
#: Acknowledged offsets are committed at most this often while messages keep coming (and always
#: before waiting for new ones, and on close). A commit per 256-message batch cost the broker and
#: this process together about 4 ms of CPU: a twentieth of what the whole loop spends.
COMMIT_INTERVAL_S = 0.5
#: A wait for messages polls for at most this long at a time and, when a poll comes back empty,
#: checks that a broker is still within reach: kafka-python retries an unreachable cluster
#: quietly until the poll's timeout, and then returns nothing, just as from a drained stream.
OUTAGE_CHECK_MS = 1000


@dataclass(eq=False, slots=True)
class _Claim:
    """One partition for as long as this member holds it: from the rebalance that assigns it to
    the one that revokes it. Each message carries the claim it was read under, so an
    acknowledgement that comes after its partition was revoked (a batch that was still in the
    predict loop) is told apart, even when a later rebalance gave the partition back."""

    partition: Any  # kafka.TopicPartition
    position_prefix: str  # "topic/partition@"
    revoked: bool = False


class KafkaTransport(Transport):
    """Publish to and consume from one Kafka topic as one consumer-group member."""

    name = SOURCE

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group: str = "vectorai-predict",
        partitions: int = 1,
        create_topic: bool = True,
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: str | None = None,
        connect_timeout_ms: int = 10000,
        **_ignored: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.create_topic = create_topic
        self.connect_timeout_ms = connect_timeout_ms
        self._client_config: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
            "security_protocol": security_protocol,
            "bootstrap_timeout_ms": connect_timeout_ms,
            "request_timeout_ms": max(connect_timeout_ms, 5000),
            "reconnect_backoff_max_ms": 2000,
        }
        if sasl_mechanism:
            # kafka-python's admin client logs its whole configuration at DEBUG: the password
            # goes in as text that prints as *** (and is sent as itself).
            self._client_config.update(sasl_mechanism=sasl_mechanism,
                                       sasl_plain_username=sasl_username,
                                       sasl_plain_password=SecretText(sasl_password) if sasl_password else None)
        if ssl_cafile:
            self._client_config["ssl_cafile"] = ssl_cafile
        self._producer = None
        self._consumer = None
        self._topic_checked = not create_topic
        self._pending: list[Any] = []
        # Records polled but not handed out yet (see READ_AHEAD_BATCHES), in offset order.
        self._read_ahead: deque[ReceivedMessage] = deque()
        # Per claimed partition: the lowest offset handed out by consume_batch and not yet
        # acknowledged, and the highest handed out (offsets within a partition are handed out
        # in order).
        self._unacked_from: dict[_Claim, int] = {}
        self._handed_out: dict[_Claim, int] = {}
        # The claim on each partition this member holds now, by (topic, partition).
        self._claims: dict[tuple[str, int], _Claim] = {}
        # For a rebalance that may give revoked partitions back to this member (see
        # _partitions_assigned): per partition, the lowest offset read and not acknowledged,
        # and the acknowledged offset its revocation could not commit.
        self._resume_at: dict[Any, int] = {}
        self._recommit: dict[Any, Any] = {}
        # Offsets acknowledged but not yet confirmed by a synchronous commit, and the latest
        # asynchronous commit sent for them.
        self._unconfirmed: dict[Any, Any] = {}
        self._sent_commit: Any = None
        self._next_commit_at = 0.0

    # --- producing -------------------------------------------------------------------------

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        producer = self._get_producer()
        from kafka.errors import KafkaError

        for message in messages:
            key = message.key.encode("utf-8") if message.key is not None else None
            # The id travels once, as the record key (consumers read it back from there).
            headers = [(name, value.encode("utf-8")) for name, value in message.attributes.items()
                       if name != "id"]
            try:
                self._pending.append(
                    producer.send(self.topic, value=message.payload, key=key, headers=headers))
            except KafkaError as err:
                raise self._error(f"cannot send to topic {self.topic}", err) from None

    def flush(self, timeout_s: float) -> None:
        if self._producer is None:
            return
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as err:
            # The futures stay pending: a later flush reports what became of them.
            raise self._error(f"{len(self._pending)} messages to topic {self.topic} not confirmed "
                              f"within {timeout_s:g}s", err) from None
        pending, self._pending = self._pending, []
        failed = [future for future in pending if not future.succeeded()]
        if failed:
            raise self._error(f"{len(failed)} of {len(pending)} messages to topic {self.topic} "
                              f"failed", failed[0].exception)

    def _get_producer(self):
        if self._producer is None:
            from kafka import KafkaProducer

            self._ensure_topic()
            self._producer = self._connect(
                KafkaProducer,
                acks="all",
                enable_idempotence=True,
                linger_ms=20,
                batch_size=256 * 1024,
                max_request_size=MAX_RECORD_BYTES,
                max_block_ms=self.connect_timeout_ms,
            )
        return self._producer

    # --- consuming -------------------------------------------------------------------------

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_ms`` for new ones.

        The wait is for *new* messages: while a join of this member's group is ahead or under
        way, or its partitions hold messages it has not fetched yet (a broker that is
        recovering), it keeps polling for up to REBALANCE_GRACE_S more rather than report a
        stream that is not drained as empty. A member that has joined and was given no
        partitions (the group has more members than the topic has partitions) has nothing to
        wait for. While it waits, no broker reachable for ``connect_timeout_ms`` raises
        TransportError: an outage is not a drained stream."""
        consumer = self._get_consumer()
        if timeout_ms > 0:
            self._confirm_commits()  # about to wait: make what was acknowledged durable first
        deadline = time.monotonic() + timeout_ms / 1000
        unreachable_since: float | None = None
        while True:
            # Until this member has joined, "no messages" means "not listening yet", not "drained".
            joining = self._joining_group()
            if timeout_ms <= 0 and not joining:
                # "Only what has arrived": one non-blocking poll, no end-offset round trip.
                return self._poll(consumer, max_messages, 0)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            behind = False
            if remaining_ms <= 0 and unreachable_since is None:
                if remaining_ms <= -REBALANCE_GRACE_S * 1000:
                    return []
                behind = not joining and self._lagging(consumer)
                if not (joining or behind):
                    return []
            waiting_on = joining or behind or unreachable_since is not None
            poll_ms = min(max(remaining_ms, 200 if waiting_on else 0), OUTAGE_CHECK_MS)
            batch = self._poll(consumer, max_messages, poll_ms)
            # poll can return early with nothing (a rebalance, a metadata refresh): keep waiting.
            if batch:
                return batch
            # Only a cluster that stays out of reach fails the wait: a broker that restarts
            # within connect_timeout_ms, or a moving group coordinator, does not.
            cause = self._unreachable()
            if cause is None:
                unreachable_since = None
            elif unreachable_since is None:
                unreachable_since = time.monotonic()
            elif time.monotonic() - unreachable_since >= self.connect_timeout_ms / 1000:
                raise self._error(f"cannot consume from topic {self.topic}",
                                  f"{cause} for {self.connect_timeout_ms / 1000:g}s")

    def _unreachable(self) -> str | None:
        """Why this member cannot reach its cluster now, or None when it can (or cannot tell).

        This reads the client's private state, hence the getattr."""
        client = getattr(self._consumer, "_client", None)
        coordinator = getattr(self._consumer, "_coordinator", None)
        if client is None or coordinator is None:
            return None
        if not any(client.connected(broker.node_id) for broker in client.cluster.brokers()):
            return "no broker connected"
        if coordinator.coordinator_unknown():
            return f"no coordinator known for group {self.group}"
        return None

    def _poll(self, consumer, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        from kafka.errors import KafkaError

        # What was read ahead is always of partitions this member holds: a rebalance that
        # revokes one drops its messages (_partitions_revoked).
        if not self._read_ahead:
            try:
                records = consumer.poll(timeout_ms=timeout_ms, max_records=max_messages * READ_AHEAD_BATCHES)
            except KafkaError as err:
                raise self._error(f"cannot consume from topic {self.topic}", err) from None
            self._read_ahead.extend(self._received(record) for partition_records in records.values()
                                    for record in partition_records)
        take = min(max_messages, len(self._read_ahead))
        batch = [self._read_ahead.popleft() for _ in range(take)]
        for message in batch:
            claim, offset = message.handle
            self._unacked_from.setdefault(claim, offset)
            self._handed_out[claim] = offset
        return batch

    def _drop_read_ahead(self, claims: set[_Claim]) -> None:
        """Forget what was read ahead under ``claims`` (revoked, or about to be re-read)."""
        if claims and self._read_ahead:
            self._read_ahead = deque(m for m in self._read_ahead if m.handle[0] not in claims)

    @staticmethod
    def _lagging(consumer) -> bool:
        """Whether an assigned partition has messages beyond this member's position."""
        from kafka.errors import KafkaError

        try:
            assigned = list(consumer.assignment())
            ends = consumer.end_offsets(assigned)
            return any(consumer.position(tp) < ends[tp] for tp in assigned)
        except (KafkaError, KeyError):
            return False  # cannot tell; treat as drained, the next run picks up the rest

    def _joining_group(self) -> bool:
        """Whether a join of the group is ahead of this member or under way: it has not joined
        yet, was dropped from the group, was told of a rebalance, or a JoinGroup/SyncGroup round
        is in flight. A member that has joined and was given no partitions is not joining.

        kafka-python 3.0.12 drops the result of a join that completes between two polls and
        starts another one; when the dropped member is the group leader that is a new rebalance,
        and members polling with short timeouts can rebalance each other forever. Polling on
        until the join completes avoids that. This reads private state, hence the getattr."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None:
            return False
        task = getattr(coordinator, "_join_task", None)
        return (not coordinator.stable() or coordinator.need_rejoin()
                or (task is not None and not getattr(task, "is_done", True)))

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        """Commit, per partition, the offset after the highest acknowledged one.

        The commit is sent without waiting for the broker's answer (a synchronous round trip per
        batch cost a tenth of the prediction loop), and at most every COMMIT_INTERVAL_S. It is
        confirmed synchronously before this member waits for new messages and on close, which is
        where a failure is reported. Until then a crash redelivers what was acknowledged since
        the last commit, whose rows the database already has and ignores, so delivery stays
        at-least-once and rows exactly-once.

        Kafka offsets are a watermark: this also marks lower offsets of the same partition as done,
        so acknowledge every message of a batch (poison ones included) once it is dealt with.

        Messages of a partition that a rebalance has taken from this member since they were
        consumed commit nothing: the partition's new owner (perhaps this member again) reads on
        from the offset committed at the rebalance, and a commit from here could move its
        commits backwards. Their rows are stored; the redelivered copies are ignored."""
        if not messages:
            return
        from kafka import OffsetAndMetadata
        from kafka.errors import KafkaError

        highest: dict[_Claim, int] = {}
        for message in messages:
            claim, offset = message.handle
            highest[claim] = max(offset, highest.get(claim, -1))
        for claim in [claim for claim in highest if claim.revoked]:
            del highest[claim]
        if not highest:
            return
        self._unconfirmed.update(
            {claim.partition: OffsetAndMetadata(offset + 1, "", -1) for claim, offset in highest.items()})
        for claim, offset in highest.items():
            if self._handed_out.get(claim, -1) > offset:
                self._unacked_from[claim] = offset + 1
            else:
                self._unacked_from.pop(claim, None)
        # One asynchronous commit at a time, of every offset acknowledged so far: a newer commit
        # supersedes an older one, and piling them up fills the connection's in-flight limit.
        if self._sent_commit is not None and not self._sent_commit.is_done:
            return
        now = time.monotonic()
        if now < self._next_commit_at:
            return
        if self._sent_commit is not None and self._sent_commit.failed():
            # Not fatal: the confirmation below retries these offsets and reports a real failure.
            log.debug("asynchronous commit for group %s failed: %s", self.group,
                      _describe(self._sent_commit.exception))
        self._next_commit_at = now + COMMIT_INTERVAL_S
        try:
            self._sent_commit = self._get_consumer().commit_async(dict(self._unconfirmed))
        except KafkaError as err:
            log.debug("asynchronous commit for group %s not sent: %s", self.group, _describe(err))
            self._sent_commit = None

    def _confirm_commits(self) -> None:
        """Commit the latest acknowledged offsets synchronously: durable when this returns."""
        if not self._unconfirmed:
            return
        from kafka.errors import KafkaError

        offsets, self._unconfirmed, self._sent_commit = self._unconfirmed, {}, None
        try:
            self._consumer.commit(offsets, timeout_ms=max(self.connect_timeout_ms, 5000))
        except KafkaError as err:
            self._commit_failed(err)

    def _commit_failed(self, err: BaseException | None) -> None:
        from kafka.errors import (CommitFailedError, IllegalGenerationError, RebalanceInProgressError,
                                  UnknownMemberIdError)

        if isinstance(err, (CommitFailedError, IllegalGenerationError, RebalanceInProgressError,
                            UnknownMemberIdError)):
            # The group rebalanced and these partitions moved to another member. Our rows are
            # committed already; the new owner redelivers from the last committed offset and the
            # database ignores rows it has. Failing the task here would only waste the batch.
            log.warning("offsets of group %s not committed after a rebalance (%s); the new owner "
                        "will redeliver them and duplicates are ignored", self.group, _describe(err))
            return
        raise self._error(f"cannot commit offsets of group {self.group}", err) from None

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Seek back to the lowest unacknowledged offset of each partition, to redeliver from there."""
        if self._consumer is None:
            return
        lowest: dict[_Claim, int] = {}
        for message in messages:
            claim, offset = message.handle
            lowest[claim] = min(offset, lowest.get(claim, offset))
        # What was read ahead of these partitions lies beyond the seek: it is read again after
        # the released messages, in order (handing it out first would let an acknowledgement
        # commit past them).
        self._drop_read_ahead(set(lowest))
        for claim, offset in lowest.items():
            if claim.revoked:
                continue  # its owner now reads on from the committed offset
            self._consumer.seek(claim.partition, min(offset, self._unacked_from.get(claim, offset)))
            self._unacked_from.pop(claim, None)
            self._handed_out.pop(claim, None)

    async def _partitions_revoked(self, consumer, revoked: set, commit: bool) -> None:
        """Let go of ``revoked`` at the start of a rebalance (or on close), while this member
        still owns them: commit what was acknowledged of them (``commit``: unless the group has
        already dropped this member), then forget their offsets, claims and read-ahead, so no
        commit of them is sent once another member may own them.

        kafka-python runs this on its network thread while the thread that called poll or close
        waits for it, so nothing else touches this transport meanwhile."""
        from kafka.errors import KafkaError

        offsets = {tp: self._unconfirmed.pop(tp) for tp in revoked if tp in self._unconfirmed}
        if offsets and commit:
            try:
                await consumer.commit_async(offsets)
            except KafkaError as err:
                # Best effort: the next owner redelivers from the last committed offset and the
                # database ignores the rows it has; if that is this member, it commits them then.
                log.warning("offsets of group %s not committed before a rebalance (%s); the next "
                            "owner will redeliver them and duplicates are ignored", self.group,
                            _describe(err))
                self._recommit.update(offsets)
        if not commit:
            # Lost: kafka-python forgets the partitions' positions, so whoever gets them reads
            # from the committed offsets, which other members may have moved on meanwhile.
            for tp in revoked:
                self._resume_at.pop(tp, None)
                self._recommit.pop(tp, None)
        claims = {claim for tp in revoked if (claim := self._claims.pop((tp.topic, tp.partition), None))}
        for claim in claims:
            claim.revoked = True
            # Read and not acknowledged: handed out (from _unacked_from on) or read ahead.
            outstanding = [m.handle[1] for m in self._read_ahead if m.handle[0] is claim]
            if (first := self._unacked_from.pop(claim, None)) is not None:
                outstanding.append(first)
            if commit and outstanding:
                self._resume_at[claim.partition] = min(outstanding)
            self._handed_out.pop(claim, None)
        self._drop_read_ahead(claims)

    def _partitions_assigned(self, consumer, assigned: set) -> None:
        """Of each partition the rebalance gave back to this member, read again what it had
        read and not acknowledged, and commit again what it acknowledged and could not commit
        at the revocation. kafka-python 3.0 keeps a kept partition's position through the
        rebalance (Java's consumer goes back to the committed offset), and those messages'
        acknowledgements commit nothing now (their claim was revoked): without this the member
        would read on past them, and the group's commits would stay short of them until more
        messages came to the partition. Nobody else can have owned the partition meanwhile: a
        rebalance revokes every partition before any member is given one."""
        resume_at, self._resume_at = self._resume_at, {}
        recommit, self._recommit = self._recommit, {}
        for tp in assigned:
            if tp in resume_at:
                consumer.seek(tp, resume_at[tp])
            if tp in recommit:
                self._unconfirmed.setdefault(tp, recommit[tp])

    @property
    def assigned_partitions(self) -> list[str]:
        """``topic/partition`` of the partitions this member holds now (empty before the first poll)."""
        if self._consumer is None:
            return []
        return sorted(f"{tp.topic}/{tp.partition}" for tp in self._consumer.assignment())

    def _get_consumer(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._ensure_topic()
            self._consumer = self._connect(
                KafkaConsumer,
                group_id=self.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # A member that vanished without leaving (a crash, a broker outage) holds its
                # partitions until its session expires; 10 s instead of 45 s shortens that stall.
                session_timeout_ms=10000,
                heartbeat_interval_ms=1000,
                # Fetch far more than one batch per request: with the 1 MiB default the consumer
                # spent a third of its time waiting for the next fetch (measured with cProfile).
                max_partition_fetch_bytes=16 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
            )
            _read_past_unparseable_records(self._consumer)
            self._consumer.subscribe([self.topic], listener=_rebalance_listener(self, self._consumer))
            self._refresh_metadata()
        return self._consumer

    def _refresh_metadata(self) -> None:
        """Fetch the topic's metadata now, before the first join.

        Otherwise kafka-python joins the group knowing no partitions of the topic (its metadata
        refresh after subscribing waits out ``retry_backoff_ms`` since the bootstrap), is
        assigned none, and joins again once the metadata arrives: the first batch came 0.1 s
        later (0.24-0.32 s after the consumer was made, against 0.13-0.20 s with this)."""
        from kafka.errors import KafkaError

        try:
            self._consumer.bootstrap(timeout_ms=self.connect_timeout_ms, refresh=True)
        except KafkaError as err:
            # Not fatal: the first poll joins anyway, only without the partitions at first.
            log.debug("metadata refresh for topic %s failed: %s", self.topic, _describe(err))

    def _received(self, record) -> ReceivedMessage:
        claim = self._claims.get((record.topic, record.partition))
        if claim is None:
            from kafka import TopicPartition

            claim = self._claims[(record.topic, record.partition)] = _Claim(
                TopicPartition(record.topic, record.partition), f"{record.topic}/{record.partition}@")
        try:
            # The strict decode, with no keyword arguments, costs half the lenient one; only a
            # header that is not UTF-8 text (or has no value) needs the lenient one.
            attributes = {name: value.decode() for name, value in record.headers}
        except (UnicodeDecodeError, AttributeError, TypeError):
            # surrogateescape, not replace: bytes that are not UTF-8 stay distinguishable (as lone
            # surrogates, which the decoder refuses with a reason) instead of turning into U+FFFD,
            # which would make two different keys one id.
            attributes = {name: str(value or b"", "utf-8", "surrogateescape") for name, value in record.headers or ()}
        if "id" not in attributes and record.key is not None:
            attributes["id"] = str(record.key, "utf-8", "surrogateescape")
        offset = record.offset
        # A record kafka-python could not parse (kafka_records) carries why: the decoder makes
        # it a dead letter, and it is acknowledged with its batch like any other.
        return ReceivedMessage(SOURCE, record.value or b"", attributes, claim.position_prefix + str(offset),
                               (claim, offset), record.problem if type(record) is RecoveredRecord else None)

    # --- shared ----------------------------------------------------------------------------

    def _ensure_topic(self) -> None:
        if self._topic_checked:
            return
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = self._connect(KafkaAdminClient)
        try:
            if self.topic not in admin.list_topics():
                try:
                    replication = min(3, len(admin.describe_cluster()["brokers"]) or 1)
                except (KafkaError, KeyError):
                    replication = -1  # not allowed to describe the cluster: the broker's default
                try:
                    admin.create_topics(
                        {self.topic: {"num_partitions": self.partitions,
                                      "replication_factor": replication,
                                      "configs": {"max.message.bytes": str(MAX_RECORD_BYTES)}}},
                        timeout_ms=self.connect_timeout_ms, wait_for_metadata=True,
                    )
                except TopicAlreadyExistsError:
                    pass  # another producer or consumer created it first
        except KafkaError as err:
            raise self._error(f"cannot create topic {self.topic}", err) from None
        finally:
            admin.close()
        self._topic_checked = True

    def _connect(self, client_class, **config: Any):
        from kafka.errors import KafkaError

        failures = _BootstrapFailures(self._client_config["bootstrap_servers"])
        manager_log = logging.getLogger("kafka")  # kafka.net.manager and kafka.net.connection
        manager_log.addHandler(failures)
        try:
            return client_class(**self._client_config, **config)
        except KafkaError as err:
            # kafka-python retries a broker that refuses us (a wrong password, a certificate it
            # cannot verify) until the timeout and then says only "Unable to bootstrap": name the
            # broker and why it refused, which it logged on the way.
            reason = _describe(err)
            if failures.last is not None:
                gave_up = (f"gave up after {self.connect_timeout_ms / 1000:g}s" if type(err).__name__ == "KafkaTimeoutError"
                           else reason)
                reason = f"{failures.last}; {gave_up}"
            raise self._error("cannot connect", reason) from None
        finally:
            manager_log.removeHandler(failures)

    def _error(self, what: str, cause: BaseException | str | None) -> TransportError:
        reason = cause if isinstance(cause, str) else _describe(cause)
        return TransportError(SOURCE, f"{what} (bootstrap servers {self.bootstrap_servers}): {reason}")

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._confirm_commits()
            except TransportError as err:
                # The rows are stored; the next run redelivers these messages and the database
                # ignores them. Closing must not turn a finished run into a failed one.
                log.warning("%s", err)
        producer, consumer = self._producer, self._consumer
        self._producer = self._consumer = None
        self._pending = []
        self._read_ahead.clear()  # never handed out, so never acknowledged: the next run reads it
        self._unacked_from.clear()
        self._handed_out.clear()
        for claim in self._claims.values():
            claim.revoked = True  # a batch still in flight must not commit on a later consumer
        self._claims.clear()
        # A later consumer of this transport starts from the group's committed offsets.
        self._resume_at.clear()
        self._recommit.clear()
        self._unconfirmed.clear()
        self._sent_commit = None
        if producer is not None:
            from kafka.errors import KafkaError

            try:
                producer.close(timeout=self.connect_timeout_ms / 1000)
            except KafkaError:
                _force_close(producer)
        if consumer is not None:
            consumer.close(autocommit=False, timeout_ms=self.connect_timeout_ms)


def _read_past_unparseable_records(consumer) -> None:
    """Make ``consumer``'s fetcher read on past a record kafka-python cannot parse, which would
    otherwise stop it on that record for good (see ``kafka_records``). The fetcher makes its
    record parsers through ``self.PartitionRecords``, so an attribute of this one fetcher
    replaces the class for this consumer alone. This reads private state, hence the getattr."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(type(fetcher), "PartitionRecords", None)
    if base is None:
        log.warning("kafka-python's fetcher has changed: a record it cannot parse will stop the stream")
        return
    fetcher.PartitionRecords = lenient_partition_records(base)


def _rebalance_listener(transport: KafkaTransport, consumer):
    """The rebalance listener that has ``transport`` let go of the partitions ``consumer`` loses.

    Asynchronous, so that the commit it sends is awaited on kafka-python's network thread,
    heartbeats going on meanwhile, and is answered before this member rejoins the group."""
    from kafka import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked) -> None:
            await transport._partitions_revoked(consumer, revoked, commit=True)

        async def on_partitions_assigned(self, assigned) -> None:
            # Claims are made as the partitions' first messages arrive.
            transport._partitions_assigned(consumer, assigned)

        async def on_partitions_lost(self, lost) -> None:
            # The group has dropped this member already: a commit would be refused.
            await transport._partitions_revoked(consumer, lost, commit=False)

    return Listener()


class _BootstrapFailures(logging.Handler):
    """Keeps why kafka-python's connections to the bootstrap brokers failed, as "broker
    HOST:PORT refused the connection: Error: text", from what it logs while it retries (it
    names bootstrap brokers ``bootstrap-N``, the N-th of the configured list). A refusal
    (credentials, certificate) is kept over a later "socket disconnected", which the broker's
    closing after the refusal causes and which explains nothing."""

    _MESSAGES = ("Bootstrap connection to", "Connection failed", "%s: Connection lost")

    def __init__(self, servers: Sequence[str]) -> None:
        super().__init__(logging.WARNING)
        self.servers = list(servers)
        self.last: str | None = None
        self._pending: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(self._MESSAGES):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        cause = next((arg for arg in args if isinstance(arg, BaseException)), None)
        if cause is None:
            return
        reason = " ".join(_describe(cause).split())
        node = next((str(arg.node_id) for arg in args if hasattr(arg, "node_id")),
                    next((arg for arg in args if isinstance(arg, str)), None))
        if node is None:  # "Connection failed" names no broker: the next record does
            if _REFUSAL.search(reason):
                self._pending = reason
            return
        if self._pending is not None and not _REFUSAL.search(reason):
            reason = self._pending
        self._pending = None
        broker = node
        if node.startswith("bootstrap-") and node[len("bootstrap-"):].isdigit():
            index = int(node[len("bootstrap-"):])
            if index < len(self.servers):
                broker = self.servers[index]
        if self.last is None or not _REFUSAL.search(self.last) or _REFUSAL.search(reason):
            self.last = f"broker {broker} refused the connection: {reason}"


_REFUSAL = re.compile(r"Authentication|Authorization|SSL|CERTIFICATE|certificate")


def _describe(err: BaseException | None) -> str:
    """One readable line for a kafka-python error, whose ``str`` is often just its class name."""
    if err is None:
        return "unknown error"
    name = type(err).__name__
    # kafka-python's broker errors read "[Error 58] Name: Name: text".
    text = re.sub(rf"^(\[Error -?\d+\]\s*)?({re.escape(name)}:?\s*)*", "", str(err).strip())
    for noise in (f"{name}: ", name, "None"):  # kafka-python repeats the class name
        text = text.removeprefix(noise).strip()
    if name in ("KafkaTimeoutError", "NoBrokersAvailable") and not text:
        return f"{name}: no broker answered in time"
    return f"{name}: {text}" if text else name


def _force_close(producer) -> None:
    """Stop a producer whose close() gave up (pending messages are lost, as close() allows).

    kafka-python 3.0.12's close() raises at its final flush while records are still pending and
    stops there, leaving its sender thread running (and __del__ raising again later)."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    producer._closed = True
