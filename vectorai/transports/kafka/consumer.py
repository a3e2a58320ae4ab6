"""The transport's consumer-group member: manual commits, bounded waits, rebalances.

Offsets are committed only for acknowledged messages, which callers acknowledge after their
results are durably stored, so a crash between consuming and storing redelivers the batch
(at-least-once). Partitions that a rebalance takes away leave the pending commits, so a member
never commits a partition another member owns now (the ``OffsetLedger`` keeps that account).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from vectorai.errors import TransportError
from vectorai.transports.base import ReceivedMessage
from vectorai.transports.kafka import _internals
from vectorai.transports.kafka.connection import KafkaConnection, describe
from vectorai.transports.kafka.ledger import OffsetLedger

log = logging.getLogger(__name__)

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


class GroupConsumer:
    """One member of consumer group ``group`` reading ``topic``."""

    def __init__(self, connection: KafkaConnection, topic: str, group: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.connection = connection
        self.topic = topic
        self.group = group
        self.ledger = OffsetLedger(TopicPartition)
        # The latest asynchronous commit sent, and when the next may be sent.
        self._sent_commit: Any = None
        self._next_commit_at = 0.0
        self.client = connection.connect(
            KafkaConsumer,
            group_id=group,
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
        _internals.read_past_unparseable_records(self.client)
        self.client.subscribe([topic], listener=_rebalance_listener(self))
        self._refresh_metadata()

    def _refresh_metadata(self) -> None:
        """Fetch the topic's metadata now, before the first join.

        Otherwise kafka-python joins the group knowing no partitions of the topic (its metadata
        refresh after subscribing waits out ``retry_backoff_ms`` since the bootstrap), is
        assigned none, and joins again once the metadata arrives: the first batch came 0.1 s
        later (0.24-0.32 s after the consumer was made, against 0.13-0.20 s with this)."""
        from kafka.errors import KafkaError

        try:
            self.client.bootstrap(timeout_ms=self.connection.connect_timeout_ms, refresh=True)
        except KafkaError as err:
            # Not fatal: the first poll joins anyway, only without the partitions at first.
            log.debug("metadata refresh for topic %s failed: %s", self.topic, describe(err))

    # --- reading ---------------------------------------------------------------------------

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        """Up to ``max_messages``, waiting at most ``timeout_ms`` for new ones (see
        ``KafkaTransport.consume_batch``)."""
        if timeout_ms > 0:
            self.confirm_commits()  # about to wait: make what was acknowledged durable first
        deadline = time.monotonic() + timeout_ms / 1000
        unreachable_since: float | None = None
        while True:
            # Until this member has joined, "no messages" means "not listening yet", not "drained".
            joining = self.joining_group()
            if timeout_ms <= 0 and not joining:
                # "Only what has arrived": one non-blocking poll, no end-offset round trip.
                return self._poll(max_messages, 0)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            behind = False
            if remaining_ms <= 0 and unreachable_since is None:
                if remaining_ms <= -REBALANCE_GRACE_S * 1000:
                    return []
                behind = not joining and self._lagging()
                if not (joining or behind):
                    return []
            waiting_on = joining or behind or unreachable_since is not None
            poll_ms = min(max(remaining_ms, 200 if waiting_on else 0), OUTAGE_CHECK_MS)
            batch = self._poll(max_messages, poll_ms)
            # poll can return early with nothing (a rebalance, a metadata refresh): keep waiting.
            if batch:
                return batch
            unreachable_since = self._unreachable_since(unreachable_since)

    def joining_group(self) -> bool:
        """Whether a join of the group is ahead of this member or under way.

        kafka-python 3.0.12 drops the result of a join that completes between two polls and
        starts another one; when the dropped member is the group leader that is a new rebalance,
        and members polling with short timeouts can rebalance each other forever. Polling on
        until the join completes avoids that."""
        return _internals.joining_group(self.client)

    def _unreachable_since(self, since: float | None) -> float | None:
        """Since when no broker has been within reach (None: one is now, or it cannot tell), or
        TransportError once that has lasted ``connect_timeout_ms``. Only a cluster that stays out
        of reach fails the wait: a broker that restarts within it, or a moving group
        coordinator, does not."""
        cause = _internals.cluster_unreachable(self.client, self.group)
        if cause is None:
            return None
        now = time.monotonic()
        timeout_s = self.connection.connect_timeout_ms / 1000
        if since is not None and now - since >= timeout_s:
            raise self.connection.error(f"cannot consume from topic {self.topic}", f"{cause} for {timeout_s:g}s")
        return now if since is None else since

    def _poll(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        from kafka.errors import KafkaError

        # What was read ahead is always of partitions this member holds: a rebalance that
        # revokes one drops its messages.
        if not self.ledger.read_ahead:
            try:
                records = self.client.poll(timeout_ms=timeout_ms, max_records=max_messages * READ_AHEAD_BATCHES)
            except KafkaError as err:
                raise self.connection.error(f"cannot consume from topic {self.topic}", err) from None
            self.ledger.read(record for partition_records in records.values() for record in partition_records)
        return self.ledger.hand_out(max_messages)

    def _lagging(self) -> bool:
        """Whether an assigned partition has messages beyond this member's position."""
        from kafka.errors import KafkaError

        try:
            assigned = list(self.client.assignment())
            ends = self.client.end_offsets(assigned)
            return any(self.client.position(tp) < ends[tp] for tp in assigned)
        except (KafkaError, KeyError):
            return False  # cannot tell; treat as drained, the next run picks up the rest

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        """Seek back to the lowest unacknowledged offset of each partition, to redeliver from there."""
        for tp, offset in self.ledger.release(messages).items():
            self.client.seek(tp, offset)

    @property
    def assigned_partitions(self) -> list[str]:
        """``topic/partition`` of the partitions this member holds now."""
        return sorted(f"{tp.topic}/{tp.partition}" for tp in self.client.assignment())

    # --- committing ------------------------------------------------------------------------

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        """Commit, per partition, the offset after the highest acknowledged one: asynchronously,
        one commit at a time and at most every COMMIT_INTERVAL_S (see ``KafkaTransport.acknowledge``)."""
        from kafka.errors import KafkaError

        if not self.ledger.acknowledge(messages):
            return
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
                      describe(self._sent_commit.exception))
        self._next_commit_at = now + COMMIT_INTERVAL_S
        try:
            self._sent_commit = self.client.commit_async(_commit_offsets(self.ledger.to_commit()))
        except KafkaError as err:
            log.debug("asynchronous commit for group %s not sent: %s", self.group, describe(err))
            self._sent_commit = None

    def confirm_commits(self) -> None:
        """Commit the latest acknowledged offsets synchronously: durable when this returns."""
        from kafka.errors import KafkaError

        offsets = self.ledger.take_to_commit()
        if not offsets:
            return
        self._sent_commit = None
        try:
            self.client.commit(_commit_offsets(offsets),
                               timeout_ms=max(self.connection.connect_timeout_ms, 5000))
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
                        "will redeliver them and duplicates are ignored", self.group, describe(err))
            return
        raise self.connection.error(f"cannot commit offsets of group {self.group}", err) from None

    # --- rebalancing -----------------------------------------------------------------------

    async def partitions_revoked(self, revoked: set, *, lost: bool = False) -> None:
        """Let go of ``revoked`` at the start of a rebalance (or on close), while this member
        still owns them: commit what was acknowledged of them (unless ``lost``: the group has
        already dropped this member), then forget their offsets, claims and read-ahead, so no
        commit of them is sent once another member may own them.

        kafka-python runs this on its network thread while the thread that called poll or close
        waits for it, so nothing else touches this member meanwhile."""
        from kafka.errors import KafkaError

        offsets = self.ledger.take_to_commit(revoked)
        if offsets and not lost:
            try:
                await self.client.commit_async(_commit_offsets(offsets))
            except KafkaError as err:
                # Best effort: the next owner redelivers from the last committed offset and the
                # database ignores the rows it has; if that is this member, it commits them then.
                log.warning("offsets of group %s not committed before a rebalance (%s); the next "
                            "owner will redeliver them and duplicates are ignored", self.group,
                            describe(err))
                self.ledger.commit_refused(offsets)
        self.ledger.revoke(revoked, lost=lost)

    def partitions_assigned(self, assigned: set) -> None:
        """Of each partition the rebalance gave back to this member, read again what it had
        read and not acknowledged, and commit again what it acknowledged and could not commit
        at the revocation. kafka-python 3.0 keeps a kept partition's position through the
        rebalance (Java's consumer goes back to the committed offset), and those messages'
        acknowledgements commit nothing now (their claim was revoked): without this the member
        would read on past them, and the group's commits would stay short of them until more
        messages came to the partition."""
        for tp, offset in self.ledger.reassigned(assigned).items():
            self.client.seek(tp, offset)

    def close(self) -> None:
        """Commit what was acknowledged and leave the group; a failed commit is only logged."""
        try:
            self.confirm_commits()
        except TransportError as err:
            # The rows are stored; the next run redelivers these messages and the database
            # ignores them. Closing must not turn a finished run into a failed one.
            log.warning("%s", err)
        self.ledger.forget()
        self._sent_commit = None
        self.client.close(autocommit=False, timeout_ms=self.connection.connect_timeout_ms)


def _commit_offsets(offsets: dict[Any, int]) -> dict[Any, Any]:
    from kafka import OffsetAndMetadata

    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


def _rebalance_listener(member: GroupConsumer):
    """The rebalance listener that has ``member`` let go of the partitions it loses.

    Asynchronous, so that the commit it sends is awaited on kafka-python's network thread,
    heartbeats going on meanwhile, and is answered before this member rejoins the group."""
    from kafka import AsyncConsumerRebalanceListener

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked) -> None:
            await member.partitions_revoked(revoked)

        async def on_partitions_assigned(self, assigned) -> None:
            # Claims are made as the partitions' first messages arrive.
            member.partitions_assigned(assigned)

        async def on_partitions_lost(self, lost) -> None:
            # The group has dropped this member already: a commit would be refused.
            await member.partitions_revoked(lost, lost=True)

    return Listener()
