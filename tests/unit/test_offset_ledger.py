"""The Kafka consumer's offset ledger, with no broker: what is handed out, what each
acknowledgement lets the member commit, where a release or a rebalance has it read again, and
what a revocation that could not commit leaves to commit when the partition comes back."""

from __future__ import annotations

from typing import NamedTuple

from vectorai.transports.kafka import OffsetLedger


class Partition(NamedTuple):  # as kafka.TopicPartition: equal to the tuple (topic, partition)
    topic: str
    partition: int


class Record(NamedTuple):  # the fields of kafka-python's ConsumerRecord the ledger reads
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list


T0, T1 = Partition("t", 0), Partition("t", 1)


def _records(tp: Partition, offsets: range) -> list[Record]:
    return [Record(tp.topic, tp.partition, offset, f"id-{offset}".encode(), b"payload", [("label", b"3")])
            for offset in offsets]


def _ledger(*reads: tuple[Partition, range]) -> OffsetLedger:
    ledger = OffsetLedger(Partition)
    for tp, offsets in reads:
        ledger.read(_records(tp, offsets))
    return ledger


def test_records_are_handed_out_in_order_as_messages():
    ledger = _ledger((T0, range(0, 10)))
    first = ledger.hand_out(4)
    assert [m.position for m in first] == ["t/0@0", "t/0@1", "t/0@2", "t/0@3"]
    assert first[0].key == "id-0" and first[0].attributes == {"label": "3", "id": "id-0"}
    assert first[0].source == "kafka" and first[0].payload == b"payload" and first[0].problem is None
    assert ledger.read_ahead == 6
    assert [m.position for m in ledger.hand_out(100)] == [f"t/0@{i}" for i in range(4, 10)]
    assert ledger.read_ahead == 0 and ledger.hand_out(5) == []


def test_an_acknowledgement_commits_the_offset_after_its_highest_message_per_partition():
    ledger = _ledger((T0, range(0, 5)), (T1, range(20, 25)))
    batch = ledger.hand_out(10)
    assert ledger.to_commit() == {}
    assert ledger.acknowledge(batch[:3]) is True
    assert ledger.to_commit() == {T0: 3}
    assert ledger.acknowledge(batch[3:]) is True
    assert ledger.to_commit() == {T0: 5, T1: 25}
    assert ledger.take_to_commit([T1]) == {T1: 25}  # a revocation takes its own partitions only
    assert ledger.take_to_commit() == {T0: 5}
    assert ledger.to_commit() == {} and ledger.take_to_commit() == {}
    assert ledger.acknowledge([]) is False


def test_a_release_reads_again_from_the_lowest_unacknowledged_offset():
    ledger = _ledger((T0, range(0, 20)), (T1, range(0, 5)))
    first, second = ledger.hand_out(4), ledger.hand_out(4)
    # Releasing a later batch while an earlier one is unacknowledged goes back to the earlier.
    assert ledger.release(second) == {T0: 0}
    # What was read ahead of that partition lies beyond the seek: it is read again, after them.
    assert [m.position for m in ledger.hand_out(100)] == [f"t/1@{i}" for i in range(5)]
    assert ledger.release(first) == {T0: 0}


def test_a_release_after_an_acknowledgement_goes_back_only_to_the_released():
    ledger = _ledger((T0, range(0, 10)))
    first, second = ledger.hand_out(5), ledger.hand_out(5)
    ledger.acknowledge(first)
    assert ledger.release(second) == {T0: 5}
    assert ledger.to_commit() == {T0: 5}


def test_messages_of_a_revoked_partition_commit_nothing_and_are_read_again_if_it_comes_back():
    ledger = _ledger((T0, range(0, 10)))
    in_flight = ledger.hand_out(5)
    ledger.revoke([T0])
    assert ledger.read_ahead == 0  # read under the old claim: dropped
    assert ledger.acknowledge(in_flight) is False and ledger.to_commit() == {}
    assert ledger.release(in_flight) == {}  # its owner reads on from the committed offset
    assert ledger.reassigned([T0]) == {T0: 0}
    # Read again under a new claim, which commits.
    ledger.read(_records(T0, range(0, 10)))
    again = ledger.hand_out(10)
    assert ledger.acknowledge(again) is True and ledger.to_commit() == {T0: 10}


def test_a_revocation_resumes_at_what_was_read_ahead_when_everything_handed_out_was_acknowledged():
    ledger = _ledger((T0, range(0, 10)))
    ledger.acknowledge(ledger.hand_out(5))
    assert ledger.take_to_commit([T0]) == {T0: 5}  # committed by the revocation
    ledger.revoke([T0])
    assert ledger.reassigned([T0]) == {T0: 5}


def test_a_partition_acknowledged_in_part_resumes_after_the_acknowledged():
    ledger = _ledger((T0, range(0, 10)))
    first, second = ledger.hand_out(3), ledger.hand_out(3)
    ledger.acknowledge(first)
    ledger.take_to_commit([T0])
    ledger.revoke([T0])
    assert ledger.acknowledge(second) is False
    assert ledger.reassigned([T0]) == {T0: 3}


def test_offsets_a_revocation_could_not_commit_are_committed_when_the_partition_comes_back():
    ledger = _ledger((T0, range(0, 5)))
    ledger.acknowledge(ledger.hand_out(5))
    refused = ledger.take_to_commit([T0])
    ledger.commit_refused(refused)
    ledger.revoke([T0])
    assert ledger.to_commit() == {}
    assert ledger.reassigned([T0]) == {}  # nothing left to read again...
    assert ledger.to_commit() == {T0: 5}  # ...but its acknowledged offsets to commit


def test_partitions_the_rebalance_gives_to_another_member_are_forgotten():
    ledger = _ledger((T0, range(0, 5)), (T1, range(0, 5)))
    ledger.hand_out(10)
    ledger.revoke([T0, T1])
    assert ledger.reassigned([T1]) == {T1: 0}
    assert ledger.reassigned([T0]) == {}  # a later rebalance: another member has read it since


def test_a_lost_partition_forgets_what_an_earlier_revocation_left_to_commit():
    ledger = _ledger((T0, range(0, 10)))
    ledger.acknowledge(ledger.hand_out(5))
    ledger.commit_refused(ledger.take_to_commit([T0]))
    ledger.revoke([T0])
    ledger.revoke([T0], lost=True)  # dropped from the group before the rebalance gave it back
    assert ledger.reassigned([T0]) == {}
    assert ledger.to_commit() == {}


def test_a_lost_partition_is_not_read_again_from_where_this_member_was():
    ledger = _ledger((T0, range(0, 10)))
    in_flight = ledger.hand_out(5)
    ledger.revoke([T0], lost=True)
    assert ledger.reassigned([T0]) == {}  # kafka-python reads it from the committed offset
    assert ledger.acknowledge(in_flight) is False


def test_forgetting_on_close_leaves_nothing_to_commit_or_hand_out():
    ledger = _ledger((T0, range(0, 10)))
    in_flight = ledger.hand_out(5)
    ledger.acknowledge(in_flight[:2])
    ledger.forget()
    assert ledger.read_ahead == 0 and ledger.to_commit() == {}
    assert ledger.acknowledge(in_flight) is False  # a batch still in flight commits nothing later
    assert ledger.reassigned([T0]) == {}
