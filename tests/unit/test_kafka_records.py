"""Record batches kafka-python cannot parse, made byte by byte: every record around the bad one is
read, the bad one is a record with a problem naming topic, partition and offset, and the
consumer's next fetch offset moves past it (kafka-python's own parser stops at it for good)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.transports.kafka import OffsetLedger, RecoveredRecord, lenient_partition_records, read_records

TOPIC = "t"


def batch(records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]], base_offset: int = 0,
          compression: int = 0) -> bytearray:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=False,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=1 << 20)
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return data


def fix_crc(data: bytearray) -> bytearray:
    from kafka.record.util import calc_crc32c

    struct.pack_into(">I", data, 17, calc_crc32c(memoryview(data)[21:]))
    return data


def replace(data: bytearray, old: bytes, new: bytes) -> bytearray:
    assert len(old) == len(new) and data.count(old) == 1
    at = data.index(old)
    data[at:at + len(old)] = new
    return data


def three(middle_header: str = "content-type") -> bytearray:
    return batch([(b"k0", b"v0", [("content-type", b"image/png")]),
                  (b"k1", b"v1", [(middle_header, b"v")]),
                  (b"k2", b"v2", [("content-type", b"image/png")])])


def kafka_python_reads(data: bytes) -> list:
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    parsed = Fetcher.PartitionRecords(0, TopicPartition(TOPIC, 0), MemoryRecords(bytes(data)))
    return parsed.take() + parsed.take()


def lenient_reads(data: bytes, fetch_offset: int = 0):
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    parsed = lenient_partition_records(Fetcher.PartitionRecords)(fetch_offset, TopicPartition(TOPIC, 0),
                                                                 MemoryRecords(bytes(data)))
    records = parsed.take()
    assert not parsed  # drained: the fetcher moves on to the next fetch
    return records, parsed.next_fetch_offset


def test_a_header_name_that_is_not_utf8_is_one_problem_and_the_records_after_it_are_read():
    data = fix_crc(replace(three("XX"), b"XX", b"\xff\xfe"))
    with pytest.raises(Exception, match="UnicodeDecodeError"):
        kafka_python_reads(data)  # what stopped the stream: the same error on every poll
    records, next_offset = lenient_reads(data)
    assert [(r.offset, r.key, r.value) for r in records] == [(0, b"k0", b"v0"), (1, b"k1", b"v1"), (2, b"k2", b"v2")]
    assert [getattr(r, "problem", None) for r in records] == [
        None, "the Kafka client cannot parse record t/0@1: header name b'\\xff\\xfe' is not UTF-8 text", None]
    assert records[1].headers == [("\udcff\udcfe", b"v")]
    assert next_offset == 3


def test_a_record_whose_lengths_do_not_add_up_is_one_problem_with_its_raw_bytes():
    # The middle record's key claims 63 bytes: it runs past its record, as no parser can follow.
    data = fix_crc(replace(three(), b"\x04k1", b"\x7ek1"))
    with pytest.raises(Exception):
        kafka_python_reads(data)
    records, next_offset = lenient_reads(data)
    assert [r.offset for r in records] == [0, 1, 2]
    assert records[0].value == b"v0" and records[2].value == b"v2"
    assert records[1].problem.startswith("the Kafka client cannot parse record t/0@1: a field of 63 bytes")
    assert b"k1" in records[1].value and b"v1" in records[1].value  # the record's raw bytes
    assert next_offset == 3


def test_a_batch_that_fails_its_crc_check_is_read_but_every_record_of_it_is_a_problem():
    data = three()
    data[-1] ^= 0xFF  # one byte of the last record's header value, CRC left as it was
    with pytest.raises(Exception, match="crc"):
        kafka_python_reads(data)
    records, next_offset = lenient_reads(data)
    assert [r.offset for r in records] == [0, 1, 2] and next_offset == 3
    assert all("failed the CRC check" in r.problem and f"t/0@{r.offset}" in r.problem for r in records)


def test_a_batch_that_cannot_be_decompressed_is_one_problem_at_its_last_offset_naming_all_of_its_offsets():
    broken = batch([(b"k0", b"v0" * 50, []), (b"k1", b"v1" * 50, []), (b"k2", b"v2" * 50, [])], compression=1)  # gzip
    broken[-8:] = b"\x00" * 8  # the gzip trailer (CRC and size) no longer fits
    fix_crc(broken)
    after = batch([(b"k3", b"v3", [])], base_offset=3)
    records, next_offset = lenient_reads(broken + after)
    assert [r.offset for r in records] == [2, 3] and next_offset == 4
    assert records[0].problem.startswith("the Kafka client cannot parse records t/0@0..2: record batch of offsets "
                                         "0..2 cannot be read")
    assert records[0].value == bytes(broken)  # its raw bytes, as far as they could be reached
    assert records[1].value == b"v3" and getattr(records[1], "problem", None) is None
    # As the consumer hands it out: one message at the position of all three offsets, standing for them.
    from kafka.structs import TopicPartition

    ledger = OffsetLedger(TopicPartition)
    ledger.read(records)
    messages = ledger.hand_out(2)
    assert [(m.position, m.stands_for) for m in messages] == [("t/0@0..2", 3), ("t/0@3", 1)]
    # Read from an offset inside the batch (another group's commit): it stands for the rest only.
    [rest], _ = lenient_reads(broken, fetch_offset=1)
    assert "records t/0@1..2:" in rest.problem


def test_records_before_the_fetch_offset_are_not_handed_out_again():
    data = fix_crc(replace(three("XX"), b"XX", b"\xff\xfe"))
    records, next_offset = lenient_reads(data, fetch_offset=2)
    assert [(r.offset, r.value) for r in records] == [(2, b"v2")] and next_offset == 3


def test_a_fetch_that_ends_inside_a_batch_reads_only_the_whole_batches():
    first, second = three(), batch([(b"k3", b"v3", [])], base_offset=3)
    records, next_offset = read_records(bytes(first + second[:-5]), TOPIC, 0)
    assert [r.offset for r in records] == [0, 1, 2] and next_offset == 3
    assert all(isinstance(r, RecoveredRecord) and r.problem is None for r in records)


def test_a_batch_whose_length_cannot_be_true_is_one_problem_at_its_first_offset():
    good = three()
    broken = bytearray(batch([(b"k3", b"v3", [])], base_offset=3))
    struct.pack_into(">i", broken, 8, 5)  # shorter than a batch header
    records, next_offset = read_records(bytes(good + broken), TOPIC, 0)
    assert [r.offset for r in records] == [0, 1, 2, 3] and next_offset == 4
    assert records[3].problem == "the Kafka client cannot parse record t/0@3: record batch at offset 3 has an " \
                                 "impossible length 5"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 10_000), after=st.integers(-1, 6))
def test_any_bytes_are_read_without_an_error_in_rising_offsets_within_their_batches(flips, cut, after):
    """Bytes flipped anywhere (batch headers included), the fetch cut anywhere: read_records never
    raises, hands out rising offsets above ``after``, never past the last batch read."""
    data = bytearray(three("XX") + batch([(b"k3", b"v3" * 40, [("h", b"x")])] * 2, base_offset=3, compression=1)
                     + batch([(b"k5", b"v5", [])], base_offset=5))
    for at, value in flips:
        data[at % len(data)] = value
    records, next_offset = read_records(bytes(data[:len(data) - cut % len(data)]), TOPIC, 0, after)
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)) and all(offset > after for offset in offsets)
    if records:
        assert next_offset is not None and next_offset > offsets[-1]
    # Each record names the offsets it stands for (a batch that could not be read: all of it),
    # which never reach back to ``after`` nor to the record before.
    previous = after
    for record in records:
        first = record.first_offset if record.first_offset is not None else record.offset
        assert previous < first <= record.offset
        previous = record.offset
        where = f" t/0@{record.offset}" if first == record.offset else f"s t/0@{first}..{record.offset}"
        assert record.problem is None or record.problem.startswith(f"the Kafka client cannot parse record{where}: ")
        assert isinstance(record.value, bytes) or record.value is None
