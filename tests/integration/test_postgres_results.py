"""vectorai.db.write_results on a real PostgreSQL: the COPY path stores every value exactly,
and a batch with rows already stored falls back to insert-or-ignore without losing the rest."""

from __future__ import annotations

import datetime as dt

import psycopg2
import pytest

from tests.conftest import pg_rows
from vectorai import db
from vectorai.errors import DatabaseError

pytestmark = pytest.mark.postgres


def _row(message_id: str, **over) -> dict:
    now = dt.datetime(2026, 11, 26, 8, 30, 15, 123456)
    row = {
        "source": "kafka", "message_id": message_id, "position": f"t/0@{len(message_id)}",
        "image": bytes(range(256)) + b"\\x\t\n\r\x00", "content_type": "image/png",
        "predicted_class": 7, "predicted_name": "seven\tclass \\ 7", "confidence": 0.375,  # exact in the REAL column
        "true_label": None, "model_version": "v1\nline two", "produced_at": None, "predicted_at": now,
    }
    row.update(over)
    return row


@pytest.mark.parametrize("table", ["created by connect", "created earlier with other column types"])
def test_values_survive_the_copy_format_exactly(pg_database, table):
    """Binary COPY for the table connect creates; text COPY for a table whose column types the
    binary format is not written for (here confidence as numeric, stamps with a time zone), made
    by an earlier version: connect adds the review page's columns to it."""
    if table != "created by connect":
        with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE prediction (id serial PRIMARY KEY, source varchar(32) NOT NULL, "
                        "message_id varchar(255) NOT NULL, position varchar(255) NOT NULL, image bytea NOT NULL, "
                        "content_type varchar(64) NOT NULL, predicted_class integer NOT NULL, "
                        "predicted_name varchar(255) NOT NULL, confidence numeric NOT NULL, true_label integer, "
                        "model_version varchar(255) NOT NULL, produced_at timestamptz, "
                        "predicted_at timestamptz NOT NULL, UNIQUE (source, message_id))")
        conn.close()
    database = db.connect(pg_database)
    try:
        rows = [_row("plain", margin=0.25, label_probability=0.125, shadow_disagrees=1), _row("tab\there"),
                _row("new\nline\r"), _row("back\\slash\\N"),
                _row("unicode-ünï-😀", true_label=3, produced_at=dt.datetime(2026, 1, 2, 3, 4, 5),
                     confidence=float("nan")),
                _row("\\N")]  # the COPY null marker as a real id
        assert db.write_results(database, rows, []) == len(rows)
    finally:
        database.close()

    stored = {r["message_id"]: r for r in pg_rows(pg_database)}
    assert set(stored) == {r["message_id"] for r in rows}
    for row in rows:
        got = stored[row["message_id"]]
        for name, value in row.items():
            if isinstance(got[name], dt.datetime) and got[name].tzinfo is not None:
                # timestamptz: the naive UTC stamp was read in the server's time zone, UTC here
                assert got[name] == value.replace(tzinfo=dt.timezone.utc), name
            elif name == "confidence" and value != value:
                assert got[name] != got[name]  # NaN stays NaN
            elif name == "image":
                assert bytes(got[name]) == value
            else:
                assert got[name] == value, (name, got[name], value)


def test_a_value_that_does_not_fit_its_column_is_a_clear_error_and_stores_nothing(pg_database):
    database = db.connect(pg_database)
    try:
        with pytest.raises(DatabaseError, match="column predicted_class: cannot store a value"):
            db.write_results(database, [_row("ok"), _row("huge", predicted_class=2**40)], [])
        with pytest.raises(DatabaseError, match="column message_id: .*NUL character"):
            db.write_results(database, [_row("ok"), _row("nul\x00")], [])
        assert db.write_results(database, [_row("ok")], []) == 1
    finally:
        database.close()
    assert [r["message_id"] for r in pg_rows(pg_database)] == ["ok"]


def test_a_batch_with_stored_rows_inserts_only_the_new_ones(pg_database):
    database = db.connect(pg_database)
    try:
        assert db.write_results(database, [_row(f"m{i}") for i in range(5)], []) == 5
        # A redelivery overlapping the first batch: COPY hits the unique key, the fallback runs.
        again = [_row(f"m{i}", predicted_class=1) for i in range(3, 9)]
        assert db.write_results(database, again, []) == 4
        assert db.write_results(database, again, []) == 0
    finally:
        database.close()

    stored = {r["message_id"]: r["predicted_class"] for r in pg_rows(pg_database)}
    # The first write of each id wins; nothing was lost or duplicated.
    assert stored == {**{f"m{i}": 7 for i in range(5)}, **{f"m{i}": 1 for i in range(5, 9)}}


def test_a_batch_that_fails_part_way_stores_none_of_its_rows(pg_database):
    """The batch is one transaction even without an explicit one (a lone COPY): when its last row
    is refused, the rows before it are not stored either, and the batch after it is."""
    database = db.connect(pg_database)
    try:
        with pytest.raises(DatabaseError, match="too long"):
            db.write_results(database, [_row("a1"), _row("a2"), _row("x" * 300)], [])
        assert pg_rows(pg_database) == []
        assert db.write_results(database, [_row("b1"), _row("b2")], []) == 2
        # With a dead letter the batch takes an explicit transaction: both tables or neither.
        dead = {"source": "kafka", "message_id": "d1", "position": "t/0@9", "reason": "bad", "attributes": "{}",
                "payload": b"x", "payload_size": 1, "received_at": dt.datetime(2026, 11, 26)}
        with pytest.raises(DatabaseError, match="too long"):
            db.write_results(database, [_row("c1")], [{**dead, "position": "p" * 300}])
        assert db.write_results(database, [_row("c2")], [dead]) == 1
        assert db.DeadLetter.select().count() == 1
    finally:
        database.close()
    assert sorted(r["message_id"] for r in pg_rows(pg_database)) == ["b1", "b2", "c2"]


def _connect_and_close(url: str) -> str:
    try:
        db.connect(url).close()
        return "ok"
    except Exception as err:  # noqa: BLE001 - reported by the test
        return str(err)


def test_processes_starting_together_create_the_tables_once(pg_database):
    """Without a lock, concurrent CREATE TABLE IF NOT EXISTS collide inside PostgreSQL
    ("duplicate key value violates unique constraint pg_type_typname_nsp_index")."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(6) as pool:
        outcomes = pool.map(_connect_and_close, [pg_database] * 6)
    assert outcomes == ["ok"] * 6
    assert pg_rows(pg_database, "SELECT COUNT(*) AS n FROM prediction") == [{"n": 0}]


def test_shadow_rows_are_written_with_their_batch_and_never_twice(pg_database):
    """Shadow scoring on PostgreSQL: the shadow model's rows go in the batch's transaction (COPY
    first; the insert-or-ignore path when either table already has some of them)."""
    def shadow_row(message_id: str, version: str) -> dict:
        return {"source": "kafka", "message_id": message_id, "model_version": version, "predicted_class": 2,
                "predicted_name": "two", "confidence": 0.5, "true_label": 2,
                "predicted_at": dt.datetime(2026, 11, 26, 8, 30)}

    database = db.connect(pg_database)
    try:
        assert db.write_results(database, [_row("a"), _row("b")], [], [shadow_row("a", "s/1"), shadow_row("b", "s/1")]) == 2
        # A redelivery with a new shadow model: no new prediction, the new model's rows stored.
        assert db.write_results(database, [_row("a"), _row("b")], [],
                                [shadow_row("a", "s/1"), shadow_row("a", "s/2"), shadow_row("b", "s/2")]) == 0
    finally:
        database.close()
    shadow = pg_rows(pg_database, "SELECT message_id, model_version FROM shadow_prediction ORDER BY 1, 2")
    assert [(r["message_id"], r["model_version"]) for r in shadow] == [("a", "s/1"), ("a", "s/2"), ("b", "s/1"),
                                                                      ("b", "s/2")]
    assert len(pg_rows(pg_database)) == 2


_OTHER_COLUMN_TYPES = ("CREATE TABLE prediction (id serial PRIMARY KEY, source varchar(32) NOT NULL, "
                       "message_id varchar(255) NOT NULL, position varchar(255) NOT NULL, image bytea NOT NULL, "
                       "content_type varchar(64) NOT NULL, predicted_class integer NOT NULL, "
                       "predicted_name varchar(255) NOT NULL, confidence numeric NOT NULL, true_label integer, "
                       "model_version varchar(255) NOT NULL, produced_at timestamptz, "
                       "predicted_at timestamptz NOT NULL, UNIQUE (source, message_id))")


@pytest.mark.parametrize("copy_format", ["binary", "text"])
def test_copy_streams_large_payloads_without_copying_the_batch(pg_database, copy_format):
    """32 MiB of payloads (16 of 2 MiB, larger than a COPY chunk, between small ones) are
    stored byte for byte, and writing them allocates a small part of that in Python: the COPY
    is streamed from the rows, not joined into one buffer (which took 2x the payloads in
    binary, about 7x in text)."""
    import tracemalloc

    import numpy as np

    if copy_format == "text":
        with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
            cur.execute(_OTHER_COLUMN_TYPES)
        conn.close()
    rng = np.random.default_rng(7)
    images = {f"big-{i}": rng.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes() for i in range(16)}
    images.update({f"small-{i}": bytes([i]) * i for i in range(8)})
    rows = [_row(message_id, image=image) for message_id, image in sorted(images.items())]
    database = db.connect(pg_database)
    try:
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            assert db.write_results(database, rows, []) == len(rows)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        database.close()
    extra_mib = (peak - before) / (1 << 20)
    # Measured: 0 MiB in binary, 4 in text (one 2 MiB image's hex digits) against 65 and 193
    # when the batch was joined into one buffer.
    assert extra_mib < (6 if copy_format == "text" else 2), f"{extra_mib:.1f} MiB allocated to write 32 MiB"
    stored = {r["message_id"]: bytes(r["image"]) for r in pg_rows(pg_database)}
    assert stored == images


def test_a_redelivered_batch_of_large_payloads_is_inserted_in_bounded_statements(pg_database):
    """A batch with rows stored already is written again with INSERT ... ON CONFLICT: in
    statements of at most INSERT_PAGE_BYTES of images, not one statement of the whole batch
    (its bytea escaped, several times the payloads); every new row is stored and counted."""
    import tracemalloc

    import numpy as np

    rng = np.random.default_rng(8)
    images = {f"img-{i:02d}": rng.integers(0, 256, 2 << 20, dtype=np.uint8).tobytes() for i in range(16)}
    rows = [_row(message_id, image=image) for message_id, image in sorted(images.items())]
    database = db.connect(pg_database)
    try:
        assert db.write_results(database, rows[:3], []) == 3
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            assert db.write_results(database, rows, []) == 13  # COPY refused, then insert-or-ignore
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        database.close()
    extra_mib = (peak - before) / (1 << 20)
    # psycopg2 escapes a page's images as hex and joins the statement: about 6 times a page
    # (measured: 24 MiB, against 128 MiB for one statement of the whole batch),
    # not a multiple of the batch.
    assert extra_mib < 8 * db.INSERT_PAGE_BYTES / (1 << 20), f"{extra_mib:.1f} MiB allocated to insert 32 MiB"
    assert {r["message_id"]: bytes(r["image"]) for r in pg_rows(pg_database)} == images


def test_shadow_rows_postgresql_refuses_are_rolled_back_alone_and_the_primary_batch_is_stored(pg_database, tmp_path):
    """PostgreSQL refuses a class name over 255 characters and one holding NUL (SQLite stores
    both): the shadow's rows are rolled back to their own savepoint, and the primary's rows,
    dead letters and acknowledgement go on; whichever way the batch is written (COPY, or
    insert-or-ignore for a redelivery)."""
    import numpy as np

    from tests.unit.helpers import tiny_onnx_model
    from tests.unit.test_shadow import named_classes
    from vectorai.inference import OnnxClassifier
    from vectorai.messages import encode_image
    from vectorai.predict import run_predictions
    from vectorai.transports import open_transport

    tiny_onnx_model(tmp_path / "primary.onnx")
    tiny_onnx_model(tmp_path / "shadow.onnx", seed=1)
    shadow = named_classes(tmp_path / "shadow.onnx", ["x" * 256, "nul\x00inside", "y" * 300])
    images = np.random.default_rng(4).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(image, f"m{i}", label=0) for i, image in enumerate(images)])
        producer.flush(5)
    database = db.connect(pg_database)
    try:
        for group in ("first", "again"):  # "again": every message redelivered, written by insert-or-ignore
            with open_transport("local", root=tmp_path, topic="t", group=group) as source:
                report = run_predictions([source], OnnxClassifier(tmp_path / "primary.onnx"), database,
                                         batch_size=8, timeout_ms=50, shadow=shadow)
                assert source.lag() == 0
            assert (report.consumed, report.shadow_scored, report.shadow_errors) == (20, 0, 3)
        # Straight through write_batch: why, for each kind of refusal.
        bad = {"source": "kafka", "message_id": "z", "model_version": "s/1", "predicted_class": 0,
               "predicted_name": "x" * 256, "confidence": 0.5, "true_label": None,
               "predicted_at": dt.datetime(2026, 11, 26, 8, 30)}
        written = db.write_batch(database, [_row("z")], [], [bad])
        assert written.new == 1 and written.shadow_rejected.startswith("DataError: value too long"), written
        written = db.write_batch(database, [_row("z")], [], [{**bad, "predicted_name": "nul\x00"}])
        assert written.new == 0 and "NUL" in written.shadow_rejected, written
        assert db.write_batch(database, [_row("z")], [], [{**bad, "predicted_name": "ok"}]) == (0, None)
    finally:
        database.close()
    assert pg_rows(pg_database, "SELECT COUNT(*) AS n FROM prediction") == [{"n": 21}]
    assert pg_rows(pg_database, "SELECT predicted_name FROM shadow_prediction") == [{"predicted_name": "ok"}]
