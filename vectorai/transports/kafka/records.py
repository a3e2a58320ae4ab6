"""Kafka records that kafka-python cannot parse become messages to dead-letter, not a stopped stream.

kafka-python parses each fetched record batch inside its fetcher, before any of our code sees a
record. A header name that is not UTF-8 (any librdkafka, Go or Java producer may send one), a
record whose lengths do not add up, a batch that fails its CRC check or cannot be decompressed:
each raises ``CorruptRecordError`` (or its kin) there, the consumer's position stays on that
record, and every later poll raises the same error again; nothing behind it is ever read.

``_internals.lenient_partition_records`` makes, for one consumer only, a fetcher class that runs
kafka-python's own parser as before and, when it raises, reads the rest of the fetched bytes with
``read_records``: every record that can be read is handed on, and one that cannot is a
``RecoveredRecord`` whose ``problem`` says why, carrying whatever bytes could still be reached.
``received_message`` makes it a message that the decoder dead-letters, and the consumer's
position moves past it as past any other record. The fast path (no bad record) is kafka-python's
own.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vectorai.transports.base import ReceivedMessage
from vectorai.transports.kafka.connection import SOURCE

#: BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
#: FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordsCount:
#: the v2 record batch header (KIP-98), as kafka-python's DefaultRecordBatch reads it.
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_LOG_OVERHEAD = 12  # BaseOffset and Length
_CRC_FROM = struct.calcsize(">qiibI")  # the CRC covers everything after its own field
_CODEC_MASK, _LOG_APPEND_TIME, _CONTROL = 0x07, 0x08, 0x20
#: Raw bytes kept of a record or batch that cannot be read at all (the dead-letter table keeps
#: its first 64 KiB anyway).
_RAW_CAP = 64 * 1024


class RecoveredRecord(NamedTuple):
    """A record read here rather than by kafka-python: the fields of kafka-python's
    ``ConsumerRecord`` (so the fetcher and consumer treat it as one), and ``problem``, why the
    record cannot be used (None for a readable record that followed an unreadable one)."""

    topic: str
    partition: int
    leader_epoch: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    serialized_header_size: int
    problem: str | None = None
    #: The first offset this record stands for, when it stands for several: a batch that could
    #: not be read at all is one record at its last offset (where the consumer's position moves
    #: on from) standing for every offset of it from this one.
    first_offset: int | None = None


class _Unreadable(Exception):
    """Why a record cannot be read, with its offset delta when it was read before the fault."""

    def __init__(self, reason: str, offset_delta: int | None = None) -> None:
        super().__init__(reason)
        self.offset_delta = offset_delta


def read_records(raw: bytes, topic: str, partition: int, after: int = -1) -> tuple[list[RecoveredRecord], int | None]:
    """Every record of the fetched bytes ``raw`` with an offset above ``after``, and the offset
    to fetch next (None when no whole batch was read). Never raises: what cannot be read is a
    record with a ``problem``."""
    out: list[RecoveredRecord] = []
    next_offset: int | None = None
    pos = 0
    while pos + _LOG_OVERHEAD <= len(raw):
        base_offset, length = struct.unpack_from(">qi", raw, pos)
        end = pos + _LOG_OVERHEAD + length
        if length >= 0 and end > len(raw):
            break  # the fetch ended inside this batch: it is read whole by a later fetch
        magic = raw[pos + 16] if pos + 16 < len(raw) else None
        if length < _BATCH_HEADER.size - _LOG_OVERHEAD or magic != 2:
            # No v2 batch to go by (a length too small for its header, or the message format
            # of Kafka before 0.11, which brokers since 4.0 no longer send), so its last offset
            # is unknown: one dead letter at its first offset; the next fetch starts after it.
            offset = max(base_offset, after + 1)
            if length < _BATCH_HEADER.size - _LOG_OVERHEAD:
                problem = f"record batch at offset {base_offset} has an impossible length {length}"
            else:
                problem = f"message format v{magic} is not read here"
            out.append(_unreadable(topic, partition, offset, raw[pos:pos + _RAW_CAP], problem))
            return out, offset + 1
        chunk = raw[pos:end]
        pos = end
        try:
            records, next_offset = _read_batch(chunk, topic, partition, after)
        except Exception as err:  # noqa: BLE001 - a batch we cannot read is its own dead letter
            header = _BATCH_HEADER.unpack_from(chunk)
            last = base_offset + header[6]
            next_offset = last + 1
            if last <= after:
                continue
            # One dead letter for the whole batch (nothing of it can be told apart), standing for
            # each of its offsets this consumer has not read yet.
            first = max(base_offset, after + 1)
            records = [_unreadable(topic, partition, last, chunk[:_RAW_CAP],
                                   f"record batch of offsets {base_offset}..{last} cannot be read: "
                                   f"{type(err).__name__}: {err}", first=first)]
        out.extend(records)
        # The position only moves forward: a later batch's offsets at or below this one's are
        # not read again (as kafka-python's fetcher would not).
        after = max(after, next_offset - 1, records[-1].offset if records else after)
    return out, None if next_offset is None else after + 1


def _read_batch(chunk: bytes, topic: str, partition: int, after: int) -> tuple[list[RecoveredRecord], int]:
    (base_offset, _, leader_epoch, _, crc, attributes, last_delta, first_timestamp, max_timestamp,
     _, _, _, count) = _BATCH_HEADER.unpack_from(chunk)
    next_offset = base_offset + last_delta + 1
    if attributes & _CONTROL or next_offset - 1 <= after:
        return [], next_offset  # transaction markers are never handed to consumers
    from kafka.record.util import calc_crc32c

    batch_problem = None
    if calc_crc32c(memoryview(chunk)[_CRC_FROM:]) != crc:
        batch_problem = f"its record batch (offsets {base_offset}..{next_offset - 1}) failed the CRC check"
    body = _decompress(attributes & _CODEC_MASK, memoryview(chunk)[_BATCH_HEADER.size:])
    timestamp_type = 1 if attributes & _LOG_APPEND_TIME else 0
    records: list[RecoveredRecord] = []
    pos = 0
    previous, last = base_offset - 1, next_offset - 1
    for _ in range(count):
        start = pos
        try:
            record, pos = _read_record(body, pos)
            delta = record[0]
        except _Unreadable as err:
            record, reason, delta = None, str(err), err.offset_delta
        # Offsets rise within a batch and end at its last one, whatever a corrupt delta says: the
        # consumer's position must never move back, nor past records of the next batch.
        offset = base_offset + delta if delta is not None and previous < base_offset + delta <= last else previous + 1
        if offset > last:
            break
        previous = offset
        if record is None:
            end = _record_length(body, start)
            if offset > after:
                raw = bytes(body[start:end if end is not None else len(body)][:_RAW_CAP])
                records.append(_unreadable(topic, partition, offset, raw, reason, leader_epoch))
            if end is None:
                break  # its length is unreadable too: the rest of the batch cannot be found
            pos = end
            continue
        if offset <= after:
            continue
        _, timestamp_delta, key, value, headers, problems = record
        problem = "; ".join(filter(None, [batch_problem, *problems])) or None
        timestamp = max_timestamp if timestamp_type else first_timestamp + timestamp_delta
        records.append(RecoveredRecord(
            topic, partition, leader_epoch, offset, timestamp, timestamp_type, key, value, headers, None,
            len(key) if key is not None else -1, len(value) if value is not None else -1, -1,
            _reason(topic, partition, offset, problem) if problem else None))
    return records, next_offset


def _decompress(codec: int, data: memoryview) -> memoryview | bytes:
    if codec == 0:
        return data
    from kafka import codec as codecs

    decoders = {1: codecs.gzip_decode, 2: lambda d: codecs.snappy_decode(bytes(d)),
                3: lambda d: codecs.lz4_decode(bytes(d)), 4: lambda d: codecs.zstd_decode(bytes(d))}
    if codec not in decoders:
        raise ValueError(f"unknown compression codec {codec}")
    return decoders[codec](data)


def _varint(buffer, pos: int) -> tuple[int, int]:
    from kafka.record.util import decode_varint

    try:
        return decode_varint(buffer, pos)
    except (IndexError, ValueError):
        raise _Unreadable(f"the record is cut short or holds an invalid varint at byte {pos}") from None


def _record_length(body, start: int) -> int | None:
    """Where the record at ``start`` ends by its own length field, or None if that is unreadable."""
    try:
        length, pos = _varint(body, start)
    except _Unreadable:
        return None
    return pos + length if length >= 0 and pos + length <= len(body) else None


def _read_record(body, pos: int):
    """One v2 record (length, attributes, timestamp delta, offset delta, key, value, headers),
    as kafka-python reads it but with header names decoded leniently: a name that is not UTF-8
    is a problem of that record only."""
    length, pos = _varint(body, pos)
    end = pos + length
    if length < 0 or end > len(body):
        raise _Unreadable(f"record length {length} does not fit its batch")
    _, pos = _varint(body, pos)  # attributes: unused in v2
    timestamp_delta, pos = _varint(body, pos)
    delta, pos = _varint(body, pos)
    try:
        key, pos = _bytes(body, pos, end)
        value, pos = _bytes(body, pos, end)
        count, pos = _varint(body, pos)
        if count < 0:
            raise _Unreadable(f"invalid header count {count}")
        headers: list[tuple[str, bytes | None]] = []
        problems: list[str] = []
        for _ in range(count):
            name, pos = _bytes(body, pos, end)
            if name is None:
                raise _Unreadable("a header has no name")
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                # surrogateescape keeps the name's bytes apart in the dead letter's attributes.
                text = name.decode("utf-8", "surrogateescape")
                problems.append(f"header name {name[:64]!r} is not UTF-8 text")
            header_value, pos = _bytes(body, pos, end)
            headers.append((text, header_value))
        if pos != end:
            raise _Unreadable(f"record of {length} bytes holds {pos - (end - length)} bytes of fields")
    except _Unreadable as err:
        err.offset_delta = delta
        raise
    return (delta, timestamp_delta, key, value, headers, problems), pos


def _bytes(body, pos: int, end: int) -> tuple[bytes | None, int]:
    size, pos = _varint(body, pos)
    if size < 0:
        return None, pos
    if pos + size > end:
        raise _Unreadable(f"a field of {size} bytes runs past the end of its record")
    return bytes(body[pos:pos + size]), pos + size


def _reason(topic: str, partition: int, offset: int, problem: str, first: int | None = None) -> str:
    if first is not None and first < offset:
        return f"the Kafka client cannot parse records {topic}/{partition}@{first}..{offset}: {problem}"
    return f"the Kafka client cannot parse record {topic}/{partition}@{offset}: {problem}"


def _unreadable(topic: str, partition: int, offset: int, raw: bytes, problem: str,
                leader_epoch: int = -1, first: int | None = None) -> RecoveredRecord:
    """A record nothing of which could be read but its place: its raw bytes are the payload.
    ``first``: the first of the offsets up to ``offset`` it stands for, when it stands for several."""
    first = first if first is not None and first < offset else None
    return RecoveredRecord(topic, partition, leader_epoch, offset, -1, 0, None, bytes(raw), [], None, -1,
                           len(raw), -1, _reason(topic, partition, offset, problem, first), first)


def offsets_of(record) -> str:
    """The offset a polled record is at, as its position names it: ``first..last`` for a
    record that stands for several (``RecoveredRecord.first_offset``)."""
    first = record.first_offset if type(record) is RecoveredRecord else None
    return str(record.offset) if first is None else f"{first}..{record.offset}"


def received_message(record, handle: object, position: str) -> ReceivedMessage:
    """The message of a polled record (kafka-python's ``ConsumerRecord`` or a ``RecoveredRecord``):
    its value, its headers as attributes and its key as the ``id`` attribute (unless a header
    says otherwise)."""
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
    # A record kafka-python could not parse carries why: the decoder makes it a dead letter, and
    # it is acknowledged with its batch like any other.
    if type(record) is not RecoveredRecord:
        return ReceivedMessage(SOURCE, record.value or b"", attributes, position, handle)
    first = record.first_offset
    return ReceivedMessage(SOURCE, record.value or b"", attributes, position, handle, record.problem,
                           1 if first is None else record.offset - first + 1)
