"""No single message may stop the stream: hostile inputs found by hand or by the fuzz test, each
through the real prediction loop, the local queue and SQLite, checked the way a user would
(rows stored, dead letters and their reasons, the run report's counts)."""

import io
import json
import struct
import zlib

import numpy as np
import pytest

from tests.unit.helpers import expected_classes, tiny_onnx_model
from vectorai import db as results_db
from vectorai.errors import DatabaseError
from vectorai.inference import OnnxClassifier
from vectorai.messages import decode as messages_module
from vectorai.messages import MAX_REASON, encode_image
from vectorai.png import SIGNATURE, encode_png
from vectorai.predict import DEAD_LETTER_ATTRIBUTES_CAP, run_predictions
from vectorai.preprocess import preprocess_images
from vectorai.transports import open_transport
from vectorai.transports.base import OutgoingMessage


@pytest.fixture
def classifier(tmp_path):
    weights = tiny_onnx_model(tmp_path / "tiny.onnx")
    return OnnxClassifier(tmp_path / "tiny.onnx"), weights


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_png() -> bytes:
    """The PNG from the report: its first IDAT chunk is short, and the chunk after it has a type
    that is not four letters, which makes Pillow raise SyntaxError (not OSError)."""
    good = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8), level=0)
    header_end = len(SIGNATURE) + 25
    length = struct.unpack_from(">I", good, header_end)[0]
    idat = good[header_end + 8:header_end + 8 + length]
    return good[:header_end] + _chunk(b"IDAT", idat[:10]) + _chunk(b"\x01\x02\x03\x04", idat[10:]) + \
        _chunk(b"IEND", b"")


def _run(tmp_path, model, outgoing, batch_size=64, topic="t"):
    with open_transport("local", root=tmp_path, topic=topic) as producer:
        producer.publish(outgoing)
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic=topic) as source:
        report = run_predictions([source], model, database, batch_size=batch_size, timeout_ms=50)
        assert source.lag() == 0  # every message, poison included, acknowledged: nothing stuck
    return report


def _dead() -> dict:
    return {(d.message_id, d.position): d for d in results_db.DeadLetter.select()}


def _good(count, start=0):
    rng = np.random.default_rng(start)
    return [encode_image(rng.integers(0, 256, (8, 8), dtype=np.uint8), f"good-{start + i}") for i in range(count)]


def _balanced(report) -> bool:
    r = report.to_dict()
    return r["consumed"] == r["predicted"] + r["already_predicted"] + r["duplicates"] + r["dead_letters"]


def test_a_broken_png_and_an_overflowing_timestamp_are_dead_letters_and_the_rest_is_stored(tmp_path, classifier):
    model, weights = classifier
    from PIL import Image

    with pytest.raises(SyntaxError):  # what escaped the decoder before: the report's exact case
        Image.open(io.BytesIO(broken_png())).load()
    good = _good(40)
    stamp = encode_image(np.zeros((8, 8), np.uint8), "old-stamp")
    old = OutgoingMessage(stamp.payload, {**stamp.attributes, "produced-at": "0001-01-01T00:00:00+01:00"})
    poison = [OutgoingMessage(broken_png(), {"id": "broken", "content-type": "image/png"}), old,
              OutgoingMessage(b"GIF89a", {"id": "not-png", "content-type": "image/png"})]
    report = _run(tmp_path, model, good[:20] + poison + good[20:])

    assert sorted(p.message_id for p in results_db.Prediction.select()) == sorted(f"good-{i}" for i in range(40))
    reasons = {key: d.reason for (key, _), d in _dead().items()}
    assert reasons["broken"].startswith("SyntaxError: broken PNG file")
    assert reasons["old-stamp"] == "produced-at '0001-01-01T00:00:00+01:00' is out of range in UTC"
    assert reasons["not-png"] == "cannot decode image: cannot identify image file <_io.BytesIO>"
    assert report.predicted == 40 and report.dead_letters == 3 and _balanced(report)


def test_any_exception_of_one_message_is_its_dead_letter_named_by_type_without_object_reprs(
        tmp_path, classifier, monkeypatch):
    """Not only the failures somebody listed: whatever one message's decoding raises."""
    model, _ = classifier
    real = messages_module.inflate_png

    def unlucky(payload, max_pixels):
        if payload == poison.payload:
            raise LookupError(f"decoder state {io.BytesIO()} lost \x00 here " + "x" * 2000)
        return real(payload, max_pixels)

    poison = encode_image(np.full((8, 8), 7, np.uint8), "unlucky")
    monkeypatch.setattr(messages_module, "inflate_png", unlucky)
    report = _run(tmp_path, model, _good(5) + [poison] + _good(5, start=5))
    (reason,) = [d.reason for d in results_db.DeadLetter.select()]
    assert reason.startswith("LookupError: decoder state <_io.BytesIO> lost \\x00 here xxx")
    assert "0x" not in reason and "\x00" not in reason and len(reason) == MAX_REASON
    assert report.predicted == 10 and _balanced(report)


@pytest.mark.parametrize("bad_id,why", [
    ("x" * 256, "'id' of 256 characters is longer than 255"),
    ("lone-\udc80-surrogate", "is not valid UTF-8 text"),
    ("nul\x00inside", "NUL character"),
    (None, "attribute 'id' is null, not a string"),
    (1, "attribute 'id' is a number, not a string"),
    ([], "attribute 'id' is an array, not a string"),
    ("", "missing 'id'"),
])
def test_ids_that_cannot_be_stored_as_they_are_are_dead_letters_never_truncated_or_merged(
        tmp_path, classifier, bad_id, why):
    model, _ = classifier
    image = np.zeros((8, 8), np.uint8)
    template = encode_image(image, "t")
    neighbours = [encode_image(image, "x" * 255), encode_image(image, "1"), encode_image(image, "None")]
    bad = OutgoingMessage(template.payload, {**template.attributes, "id": bad_id})
    report = _run(tmp_path, model, neighbours + [bad])
    assert sorted(p.message_id for p in results_db.Prediction.select()) == sorted(["x" * 255, "1", "None"])
    (dead,) = results_db.DeadLetter.select()
    assert why in dead.reason
    assert dead.message_id is None  # the raw id is kept in attributes, never a mangled one
    assert json.loads(dead.attributes)["id"] == bad_id
    assert report.predicted == 3 and report.dead_letters == 1 and _balanced(report)


def test_other_attributes_that_are_not_strings_are_dead_letters(tmp_path, classifier):
    model, _ = classifier
    template = encode_image(np.zeros((8, 8), np.uint8), "n")
    bad = OutgoingMessage(template.payload, {**template.attributes, "label": 2})
    report = _run(tmp_path, model, [bad] + _good(3))
    (dead,) = results_db.DeadLetter.select()
    assert dead.message_id == "n" and dead.reason == "attribute 'label' is a number, not a string"
    assert report.predicted == 3 and _balanced(report)


def test_every_report_adds_up_with_duplicates_redeliveries_and_dead_letters(tmp_path, classifier):
    model, weights = classifier
    good = _good(10)
    repeated = [good[3], good[3], good[7]]  # the same ids again, within the batch
    poison = OutgoingMessage(b"\x00", {"id": "p", "content-type": "image/png"})
    first = _run(tmp_path, model, good + repeated + [poison], batch_size=100)
    assert (first.predicted, first.duplicates, first.dead_letters, first.consumed) == (10, 3, 1, 14)
    assert _balanced(first)
    # Everything again on a new queue file: already predicted, and the poison once more.
    (tmp_path / "t.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"t.sqlite{suffix}").unlink(missing_ok=True)
    again = _run(tmp_path, model, good + [poison], batch_size=4)
    assert (again.predicted, again.already_predicted, again.dead_letters) == (0, 10, 1) and _balanced(again)
    assert results_db.Prediction.select().count() == 10
    classes = expected_classes(weights, preprocess_images(
        np.stack([np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)]), model.spec))
    assert results_db.Prediction.get(message_id="good-0").predicted_class == int(classes[0])


def test_new_poison_at_a_position_seen_before_is_stored_and_a_redelivery_is_not(tmp_path, classifier):
    """Offsets start again with a new local queue file (or a recreated Kafka topic): a dead
    letter is unique on what the message was, not only where it came from."""
    model, _ = classifier
    first = OutgoingMessage(b"garbage one", {"id": "p1", "content-type": "image/png"})
    _run(tmp_path, model, [first])
    # The same message delivered again at the same position (its acknowledgement lost): stored once.
    import sqlite3

    with sqlite3.connect(tmp_path / "t.sqlite") as queue:
        queue.execute("DELETE FROM cursors")
    _run(tmp_path, model, [])
    assert len(_dead()) == 1
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"t.sqlite{suffix}").unlink(missing_ok=True)
    second = OutgoingMessage(b"garbage two", {"id": "p2", "content-type": "image/png"})
    _run(tmp_path, model, [second])
    dead = _dead()
    assert set(dead) == {("p1", "t@1"), ("p2", "t@1")}
    assert bytes(dead[("p2", "t@1")].payload) == b"garbage two"


def test_dead_letter_reason_and_attributes_are_capped_and_stay_valid_json(tmp_path, classifier):
    model, _ = classifier
    attributes = {"id": "big", "content-type": "image/png", "note": "n" * 100_000,
                  **{f"extra-{i}": "v" * 50 for i in range(200)}}
    _run(tmp_path, model, [OutgoingMessage(b"\x89PNG not really", attributes)])
    (dead,) = results_db.DeadLetter.select()
    assert len(dead.attributes) <= DEAD_LETTER_ATTRIBUTES_CAP
    kept = json.loads(dead.attributes)
    assert kept["id"] == "big" and kept["note"] == "n" * 512
    assert kept["..."] == f"203 attributes, {len(json.dumps(attributes))} characters in all"
    assert len(dead.reason) <= MAX_REASON


def test_a_database_made_by_the_previous_version_is_upgraded_in_place(tmp_path, classifier):
    """Its dead letters keep their rows; new poison at an old position is stored beside them."""
    import sqlite3

    path = tmp_path / "r.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, source VARCHAR(32) NOT NULL, message_id "
                    "VARCHAR(255), position VARCHAR(255) NOT NULL, reason TEXT NOT NULL, attributes TEXT NOT NULL, "
                    "payload BLOB NOT NULL, payload_size INTEGER NOT NULL, received_at DATETIME NOT NULL)")
        old.execute("CREATE UNIQUE INDEX dead_letter_source_position ON dead_letter (source, position)")
        old.execute("INSERT INTO dead_letter VALUES (1, 'local', 'old', 't@1', 'r', '{}', x'00', 1, '2026-01-01')")
    model, _ = classifier
    _run(tmp_path, model, [OutgoingMessage(b"new garbage", {"id": "new", "content-type": "image/png"})])
    assert set(_dead()) == {("old", "t@1"), ("new", "t@1")}


def test_a_batch_failure_names_the_source_and_positions_of_the_batch(tmp_path, classifier):
    model, _ = classifier
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish(_good(5))
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    results_db.Prediction.drop_table()
    with open_transport("local", root=tmp_path, topic="t") as source:
        with pytest.raises(DatabaseError) as err:
            run_predictions([source], model, database, batch_size=10, timeout_ms=50)
        assert source.lag() == 5
    assert str(err.value).startswith("database sqlite:///")
    assert str(err.value).endswith("(in the batch of 5 from local (t@1 .. t@5), released for redelivery)")


def test_a_batch_of_huge_pngs_stays_within_the_memory_budget(tmp_path):
    """16 4096x4096 RGBA PNGs in one batch (64 KiB each on the wire, 1 GiB of pixels together):
    each is reduced to the model's size as soon as it is decoded, so a fresh PredictTask process
    stays under 1 GiB and predicts every one. (The benchmark runs the same with 256.)"""
    from benchmarks.memory import LARGE_BUDGET_MIB, measure_large_images

    tiny_onnx_model(tmp_path / "model.onnx", height=28, width=28, channels=1, classes=10)
    result = measure_large_images(tmp_path / "model.onnx", tmp_path, count=16, batch_size=16)
    assert result["consumed"] == 16 and result["predicted"] == 16 and result["dead_letters"] == 0
    assert result["peak_rss_mib"] < LARGE_BUDGET_MIB, result


def test_a_batch_that_fails_before_the_model_is_released_and_named(tmp_path, classifier, monkeypatch):
    """Not a message's fault (here: the process runs out of memory while preparing the batch):
    the run fails with one line naming the batch, and the same consumer gets the batch again."""
    from vectorai.errors import BatchError
    from vectorai.predict import loop

    model, _ = classifier
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish(_good(12))
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    real = loop.decode_batch
    calls = []

    def failing_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("cannot allocate the batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "decode_batch", failing_first)
    with open_transport("local", root=tmp_path, topic="t") as source:
        with pytest.raises(BatchError) as err:
            run_predictions([source], model, database, batch_size=5, timeout_ms=50)
        assert str(err.value) == "batch of 5 from local (t@1 .. t@5): MemoryError: cannot allocate the batch"
        again = run_predictions([source], model, database, batch_size=5, timeout_ms=50)
    assert again.predicted + again.already_predicted == 12
    assert results_db.Prediction.select().count() == 12
