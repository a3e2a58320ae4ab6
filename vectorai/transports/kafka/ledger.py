"""Which offsets of each partition a consumer-group member has read, handed out, acknowledged and
committed, and what becomes of them when a rebalance takes partitions away or gives them back.

Kafka offsets are a watermark: committing offset N marks every lower offset of the partition as
done. So a member must never commit past a message it has not acknowledged, nor commit a
partition that another member owns now. The ledger knows nothing of the network: the consumer
polls, seeks and commits what it says.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Sequence

from vectorai.transports.base import ReceivedMessage
from vectorai.transports.kafka.records import offsets_of, received_message


@dataclass(eq=False, slots=True)
class Claim:
    """One partition for as long as this member holds it: from the rebalance that assigns it to
    the one that revokes it. Each message carries the claim it was read under, so an
    acknowledgement that comes after its partition was revoked (a batch that was still in the
    predict loop) is told apart, even when a later rebalance gave the partition back."""

    partition: Any  # what OffsetLedger's make_partition made: a kafka.TopicPartition
    position_prefix: str  # "topic/partition@"
    revoked: bool = False


class OffsetLedger:
    """The offsets of one member's partitions. A message's ``handle`` is ``(claim, offset)``.

    ``make_partition(topic, partition)`` makes the key a partition's offsets are sought and
    committed under: a kafka.TopicPartition (anything hashable with ``topic`` and ``partition``).
    Offsets to commit are the offset after the last acknowledged one, as Kafka commits them."""

    def __init__(self, make_partition: Callable[[str, int], Hashable]) -> None:
        self._make_partition = make_partition
        # Records read but not handed out yet, in offset order per partition.
        self._read_ahead: deque[ReceivedMessage] = deque()
        # Per claim: the lowest offset handed out and not yet acknowledged, and the highest
        # handed out (offsets within a partition are handed out in order).
        self._unacked_from: dict[Claim, int] = {}
        self._handed_out: dict[Claim, int] = {}
        # The claim on each partition this member holds now, by (topic, partition).
        self._claims: dict[tuple[str, int], Claim] = {}
        # For a rebalance that may give revoked partitions back (see ``reassigned``): per
        # partition, the lowest offset read and not acknowledged, and the offset to commit that
        # its revocation could not commit.
        self._resume_at: dict[Any, int] = {}
        self._recommit: dict[Any, int] = {}
        # Per partition: the offset to commit, acknowledged but not yet confirmed committed.
        self._unconfirmed: dict[Any, int] = {}

    # --- reading and handing out -----------------------------------------------------------

    def read(self, records: Iterable[Any]) -> None:
        """Keep polled kafka-python records, in their order, to be handed out."""
        self._read_ahead.extend(self._message(record) for record in records)

    @property
    def read_ahead(self) -> int:
        """How many messages were read and not handed out yet."""
        return len(self._read_ahead)

    def hand_out(self, max_messages: int) -> list[ReceivedMessage]:
        """Up to ``max_messages`` of what was read, oldest first."""
        take = min(max_messages, len(self._read_ahead))
        batch = [self._read_ahead.popleft() for _ in range(take)]
        for message in batch:
            claim, offset = message.handle
            self._unacked_from.setdefault(claim, offset)
            self._handed_out[claim] = offset
        return batch

    def _message(self, record) -> ReceivedMessage:
        claim = self._claims.get((record.topic, record.partition))
        if claim is None:
            claim = self._claims[(record.topic, record.partition)] = Claim(
                self._make_partition(record.topic, record.partition), f"{record.topic}/{record.partition}@")
        return received_message(record, (claim, record.offset), claim.position_prefix + offsets_of(record))

    # --- acknowledging and committing ------------------------------------------------------

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> bool:
        """Mark, per partition, everything up to the highest of ``messages`` to be committed.
        Messages of a partition revoked since they were read commit nothing: the partition's
        new owner (perhaps this member again) reads on from the offset committed at the
        rebalance, and a commit from here could move it backwards. Whether any was marked."""
        highest: dict[Claim, int] = {}
        for message in messages:
            claim, offset = message.handle
            if not claim.revoked:
                highest[claim] = max(offset, highest.get(claim, -1))
        for claim, offset in highest.items():
            self._unconfirmed[claim.partition] = offset + 1
            if self._handed_out.get(claim, -1) > offset:
                self._unacked_from[claim] = offset + 1
            else:
                self._unacked_from.pop(claim, None)
        return bool(highest)

    def to_commit(self) -> dict[Any, int]:
        """Every offset acknowledged and not yet confirmed committed, by partition."""
        return dict(self._unconfirmed)

    def take_to_commit(self, partitions: Iterable[Any] | None = None) -> dict[Any, int]:
        """What ``to_commit`` says (of ``partitions`` only, if given), no longer kept here: the
        caller commits it now."""
        if partitions is None:
            offsets, self._unconfirmed = self._unconfirmed, {}
            return offsets
        return {tp: self._unconfirmed.pop(tp) for tp in partitions if tp in self._unconfirmed}

    def commit_refused(self, offsets: dict[Any, int]) -> None:
        """``offsets`` could not be committed as their partitions were revoked: commit them if
        a rebalance gives the partitions back (see ``reassigned``)."""
        self._recommit.update(offsets)

    # --- giving back -----------------------------------------------------------------------

    def release(self, messages: Sequence[ReceivedMessage]) -> dict[Any, int]:
        """Give back ``messages`` unprocessed: where to seek each partition to read them (and
        what was handed out after them) again. What was read ahead of these partitions lies
        beyond the seek and is forgotten, to be read again after them in order (handing it out
        first would let an acknowledgement commit past them)."""
        lowest: dict[Claim, int] = {}
        for message in messages:
            claim, offset = message.handle
            lowest[claim] = min(offset, lowest.get(claim, offset))
        self._drop_read_ahead(set(lowest))
        seeks = {}
        for claim, offset in lowest.items():
            if claim.revoked:
                continue  # its owner now reads on from the committed offset
            seeks[claim.partition] = min(offset, self._unacked_from.get(claim, offset))
            self._unacked_from.pop(claim, None)
            self._handed_out.pop(claim, None)
        return seeks

    def revoke(self, partitions: Iterable[Any], *, lost: bool = False) -> None:
        """Let go of ``partitions`` at a rebalance: their claims end, so no later acknowledgement
        commits them, and what was read of them is forgotten. Revoked, each remembers the lowest
        offset read and not acknowledged, to be read again should the rebalance give it back.
        ``lost``: the group dropped this member, and whoever gets the partitions reads from the
        committed offsets, which others may have moved on meanwhile: nothing is remembered.
        Take what to commit of them first (``take_to_commit``)."""
        partitions = list(partitions)
        if lost:
            for tp in partitions:
                self._resume_at.pop(tp, None)
                self._recommit.pop(tp, None)
        claims = {claim for tp in partitions if (claim := self._claims.pop((tp.topic, tp.partition), None))}
        for claim in claims:
            claim.revoked = True
            # Read and not acknowledged: handed out (from _unacked_from on) or read ahead.
            outstanding = [m.handle[1] for m in self._read_ahead if m.handle[0] is claim]
            if (first := self._unacked_from.pop(claim, None)) is not None:
                outstanding.append(first)
            if not lost and outstanding:
                self._resume_at[claim.partition] = min(outstanding)
            self._handed_out.pop(claim, None)
        self._drop_read_ahead(claims)

    def reassigned(self, partitions: Iterable[Any]) -> dict[Any, int]:
        """The rebalance after a revocation gave ``partitions`` to this member: where to seek
        those it had read and not acknowledged, to read them again; and what their revocation
        could not commit is to be committed again. Nobody else can have owned them meanwhile: a
        rebalance revokes every partition before any member is given one."""
        resume_at, self._resume_at = self._resume_at, {}
        recommit, self._recommit = self._recommit, {}
        seeks = {}
        for tp in partitions:
            if tp in resume_at:
                seeks[tp] = resume_at[tp]
            if tp in recommit:
                self._unconfirmed.setdefault(tp, recommit[tp])
        return seeks

    def forget(self) -> None:
        """Forget everything, as the consumer closes: what was read ahead was never handed out,
        so never acknowledged, and the next consumer starts from the group's committed offsets.
        A batch still in flight commits nothing later."""
        self._read_ahead.clear()
        self._unacked_from.clear()
        self._handed_out.clear()
        for claim in self._claims.values():
            claim.revoked = True
        self._claims.clear()
        self._resume_at.clear()
        self._recommit.clear()
        self._unconfirmed.clear()

    def _drop_read_ahead(self, claims: set[Claim]) -> None:
        if claims and self._read_ahead:
            self._read_ahead = deque(m for m in self._read_ahead if m.handle[0] not in claims)
