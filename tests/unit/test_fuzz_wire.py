"""Fuzzing at the wire, below the message: what a transport hands the decoder is itself mutated.

* **Kafka record batches**, written byte by byte: random keys (any bytes, or none), header names
  (any bytes, UTF-8 or not), header values (any bytes or none, deeply nested JSON text too),
  header counts that are right or wrong, a truncated or padded record, a broken CRC, among good
  records. They go through the
  consumer's fetcher (kafka-python's parser, and ours past what it cannot parse), the Kafka
  transport's conversion to messages and the per-batch path (``check_batch``): every record is
  handed on once, in order, and ends as a row or a dead letter; nothing raises.
* **Local queue rows**, written straight into the queue's SQLite file as another producer might:
  a payload of TEXT, a number or NULL, attributes that are JSON with NaN, objects, arrays or null
  as values, nested up to 5,000 deep, not JSON, not an object, or NULL. ``run_predictions`` over them: every row is
  predicted or dead-lettered, every dead letter's attributes are valid JSON, and a second run
  (another consumer group, so every row comes again) stores nothing new.

``make test`` runs a fixed budget (FUZZ_EXAMPLES / 10 fetches and / 40 queues, drawn the same way
every time, about 25 s);
``make fuzz`` draws new ones (FUZZ_RANDOM=1), many more. A failure prints the smallest input that
breaks the property: keep it as a test (as the TEXT payload and NaN rows below) before fixing it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_fuzz_decode import DEPTHS, _classifier, _corpus, _digits28, check_batch, payloads
from vectorai import db as results_db
from vectorai.messages import PNG, encode_image
from vectorai.predict import run_predictions
from vectorai.transports.kafka import OffsetLedger, lenient_partition_records
from vectorai.transports.local import LocalTransport

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
SETTINGS = settings(deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    _corpus()
    _digits28()
    _classifier()


@pytest.fixture(scope="module")
def database():
    db = results_db.connect("sqlite:///:memory:")
    yield db
    db.close()


def _good() -> list:
    return [encode_image(image, f"good-{i}", label=i) for i, image in enumerate(_digits28())]


# --- Kafka record batches ----------------------------------------------------------------------

def _varint(value: int, out: bytearray) -> None:
    from kafka.record.util import encode_varint

    encode_varint(value, out.append)


def _field(value: bytes | None, out: bytearray) -> None:
    if value is None:
        _varint(-1, out)
    else:
        _varint(len(value), out)
        out += value


@st.composite
def kafka_records(draw, delta: int) -> bytes:
    """One v2 record (with its length prefix): a good message, or one mutated at the wire."""
    good = draw(st.sampled_from(_good()))
    if draw(st.integers(0, 2)) == 0:
        key, value = good.attributes["id"].encode(), good.payload
        headers = [(name.encode(), text.encode()) for name, text in good.attributes.items() if name != "id"]
        count = len(headers)
    else:
        key = draw(st.one_of(st.none(), st.binary(max_size=20), st.just(good.attributes["id"].encode())))
        value = draw(st.one_of(st.none(), st.just(good.payload), payloads().map(lambda kind_bytes: kind_bytes[1])))
        names = st.one_of(st.sampled_from([b"content-type", b"id", b"label", b"produced-at", b"\xff\xfe",
                                           b"content-\xc3\x28", b""]), st.binary(max_size=12))
        values = st.one_of(st.none(), st.sampled_from([PNG.encode(), b"3", b"\xc3\x28", b"\x00"]),
                           st.binary(max_size=12), DEPTHS.map(lambda depth: b"[" * depth + b"]" * depth))
        headers = draw(st.lists(st.tuples(names, values), max_size=5))
        count = len(headers) + draw(st.sampled_from([0, 0, 0, -1, 1, -len(headers) - 1]))
    body = bytearray(b"\x00")  # attributes
    _varint(0, body)  # timestamp delta
    _varint(delta, body)
    _field(key, body)
    _field(value, body)
    _varint(count, body)
    for name, text in headers:
        _field(name, body)
        _field(text, body)
    cut = draw(st.sampled_from([0, 0, 0, 0, -1, 1]))  # a record shorter or longer than it says
    body = body[:len(body) + cut] if cut < 0 else body + b"\x00" * cut
    record = bytearray()
    _varint(len(body), record)
    return bytes(record + body)


def kafka_batch(records: list[bytes], base_offset: int, good_crc: bool = True) -> bytes:
    from kafka.record.util import calc_crc32c

    body = b"".join(records)
    header = struct.pack(">qiibIhiqqqhii", base_offset, 49 + len(body), 0, 2, 0, 0, len(records) - 1,
                         1_700_000_000_000, 1_700_000_000_000, -1, -1, -1, len(records))
    data = bytearray(header + body)
    struct.pack_into(">I", data, 17, calc_crc32c(memoryview(data)[21:]) ^ (0 if good_crc else 1))
    return bytes(data)


@st.composite
def fetches(draw) -> tuple[bytes, int]:
    """The bytes of one fetch: a few batches of records, and how many records they hold."""
    data, offset = b"", 0
    for _ in range(draw(st.integers(1, 3))):
        records = [draw(kafka_records(delta)) for delta in range(draw(st.integers(1, 5)))]
        data += kafka_batch(records, offset, good_crc=draw(st.integers(0, 9)) > 0)
        offset += len(records)
    return data, offset


@settings(SETTINGS, max_examples=max(20, EXAMPLES // 10))
@given(fetch=fetches())
def test_every_kafka_record_at_the_wire_is_handed_on_once_and_is_a_row_or_a_dead_letter(fetch, database):
    from kafka.consumer.fetcher import Fetcher
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import TopicPartition

    data, count = fetch
    parsed = lenient_partition_records(Fetcher.PartitionRecords)(0, TopicPartition("t", 0), MemoryRecords(data))
    records = parsed.take()
    assert not parsed and parsed.next_fetch_offset == count  # drained, and the next fetch starts past them
    assert [record.offset for record in records] == list(range(count))
    ledger = OffsetLedger(TopicPartition)  # what the consumer makes of the records it polls
    ledger.read(records)
    messages = ledger.hand_out(len(records))
    assert all(type(m.payload) is bytes for m in messages)
    check_batch(messages, database)


# --- local queue rows --------------------------------------------------------------------------

_JSON_VALUES = st.one_of(st.text(max_size=12), st.none(), st.integers(), st.booleans(),
                         st.floats(allow_nan=True, allow_infinity=True),
                         st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                         st.lists(st.integers(), max_size=2))


@st.composite
def attribute_columns(draw, good_attributes: dict[str, str]) -> object:
    """The attributes column: the good message's JSON, or it changed, or not JSON at all."""
    choice = draw(st.integers(0, 5))
    attributes: dict[str, object] = dict(good_attributes)
    if choice == 0:
        return json.dumps(attributes)
    if choice <= 2:
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from([*attributes, "x"]))
            attributes[name] = draw(_JSON_VALUES)
        return json.dumps(attributes)  # NaN and Infinity as Python writes them, as json.loads reads them
    if choice == 3:  # nested past the bound, Python's recursion limit or json.loads's (text made by hand)
        depth, opener = draw(DEPTHS), draw(st.sampled_from(["[", '{"k":']))
        closer = "]" if opener == "[" else "}"
        return json.dumps(attributes)[:-1] + f', "deep": {opener * depth}0{closer * depth}}}'
    return draw(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.binary(max_size=8), st.sampled_from(["[]", "null", "{", '"x"']),
                          st.text(max_size=12)))


@st.composite
def queue_rows(draw) -> list[tuple[object, object, object]]:
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        good = draw(st.sampled_from(_good()))
        attributes = draw(attribute_columns(dict(good.attributes)))
        payload = draw(st.one_of(st.just(good.payload), st.just(good.payload), payloads().map(lambda kb: kb[1]),
                                 st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.floats(), st.none()))
        key = draw(st.one_of(st.none(), st.just(good.attributes["id"]), st.integers(-2**63, 2**63 - 1)))
        rows.append((key, attributes, payload))
    return rows


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@settings(SETTINGS, max_examples=max(10, EXAMPLES // 40))  # two runs of the loop each
@given(rows=queue_rows())
def test_every_local_queue_row_is_predicted_or_a_dead_letter_and_a_second_run_stores_nothing_new(rows, tmp_path_factory):
    folder = tmp_path_factory.mktemp("queue")
    with sqlite3.connect(folder / "fuzz.sqlite") as queue:
        # As another producer might have made it: no NOT NULL, no types enforced.
        queue.execute("CREATE TABLE messages (offset INTEGER PRIMARY KEY AUTOINCREMENT, key, attributes, payload,"
                      " published_at)")
        queue.executemany("INSERT INTO messages (key, attributes, payload, published_at) VALUES (?, ?, ?, 0)", rows)
    queue.close()
    database = results_db.connect(f"sqlite:///{folder / 'results.sqlite'}")
    try:
        reports = []
        for group in ("first", "second"):
            with LocalTransport(folder, "fuzz", group=group) as source:
                reports.append(run_predictions([source], _classifier(), database, batch_size=4, timeout_ms=0))
            if group == "first":
                predictions = results_db.Prediction.select().count()
                dead = list(results_db.DeadLetter.select())
        first, second = reports
        assert first.consumed == len(rows) == (first.predicted + first.already_predicted + first.duplicates
                                               + first.dead_letters)
        assert predictions == first.predicted and len(dead) == first.dead_letters
        for letter in dead:
            assert isinstance(_strict_json(letter.attributes), dict)
            assert letter.reason and isinstance(letter.payload, bytes)
        # Every row again, in another group: nothing new is stored.
        assert second.consumed == len(rows) and second.predicted == 0
        assert results_db.Prediction.select().count() == predictions
        assert results_db.DeadLetter.select().count() == len(dead)
    finally:
        database.close()


def test_a_text_payload_and_a_nan_attribute_in_the_local_queue_are_dead_letters_with_valid_json(tmp_path):
    """The two rows that escaped before: a TEXT payload failed every batch it was in, a NaN made
    the dead letter's attributes invalid JSON."""
    good = _good()[0]
    text_payload = ("raw", json.dumps({**good.attributes, "id": "text", "content-type":
                                       "application/x-ndarray; dtype=uint8; shape=2,2"}), "abcd")
    nan = ("nan", json.dumps({**good.attributes, "id": "nan", "label": math.nan}), good.payload)
    with sqlite3.connect(tmp_path / "q.sqlite") as queue:
        queue.execute("CREATE TABLE messages (offset INTEGER PRIMARY KEY AUTOINCREMENT, key, attributes, payload,"
                      " published_at)")
        queue.executemany("INSERT INTO messages (key, attributes, payload, published_at) VALUES (?, ?, ?, 0)",
                          [text_payload, nan, ("good", json.dumps(dict(good.attributes)), good.payload)])
    queue.close()
    database = results_db.connect(f"sqlite:///{tmp_path / 'results.sqlite'}")
    try:
        with LocalTransport(tmp_path, "q") as source:
            report = run_predictions([source], _classifier(), database, batch_size=8, timeout_ms=0)
        assert (report.predicted, report.dead_letters) == (1, 2)
        dead = {letter.position: letter for letter in results_db.DeadLetter.select()}
        assert dead["q@1"].reason == "payload is TEXT, not a BLOB" and dead["q@1"].payload == b"abcd"
        assert dead["q@2"].reason == "attribute 'label' is a number, not a string"
        assert _strict_json(dead["q@2"].attributes)["label"] == "nan"
    finally:
        database.close()


_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)  # lone surrogates too


@settings(SETTINGS, max_examples=300)
@given(attributes=st.dictionaries(_ANY_TEXT, st.one_of(_ANY_TEXT, _JSON_VALUES), max_size=8), data=st.data())
def test_a_dead_letter_has_one_fingerprint_for_any_order_of_its_attributes_and_valid_json(attributes, data):
    """As a Pub/Sub attribute map comes in another order in another process."""
    import datetime as dt

    from vectorai.predict.dead_letters import dead_letter
    from vectorai.transports.base import ReceivedMessage

    shuffled = dict(data.draw(st.permutations(list(attributes.items()))))
    now = dt.datetime(2026, 1, 1)
    one, two = (dead_letter(ReceivedMessage("pubsub", b"poison", attrs, "m-1"), "why", now)
                for attrs in (attributes, shuffled))
    assert one["fingerprint"] == two["fingerprint"] and one["attributes"] == two["attributes"]
    stored = _strict_json(one["attributes"])
    assert isinstance(stored, dict) and len(stored) == len(attributes)
    one["attributes"].encode("ascii")  # lone surrogates escaped: storable in any text column
