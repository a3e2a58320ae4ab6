"""vectorai.db.write_results on SQLite stores what Peewee's own insert stores, value for value."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sqlite3

import peewee as pw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectorai import db
from vectorai.errors import DatabaseError


def _rows() -> list[dict]:
    stamps = [dt.datetime(2026, 11, 26, 8, 30, 15, 123456), dt.datetime(2026, 1, 2, 3, 4, 5), None]
    return [{
        "source": "local", "message_id": f"m{i}", "position": f"t@{i}", "image": bytes([i]) * 7,
        "content_type": "image/png", "predicted_class": i % 3, "predicted_name": f"c{i % 3}",
        "confidence": 0.25 * (i % 4), "true_label": i % 2 or None, "model_version": "v1",
        "produced_at": stamps[i % 3], "predicted_at": stamps[(i + 1) % 2],
    } for i in range(9)]


def _table(path) -> list[tuple]:
    with sqlite3.connect(path) as raw:  # no converters: the stored text itself
        return raw.execute("SELECT source, message_id, position, image, content_type, predicted_class,"
                           " predicted_name, confidence, true_label, model_version, produced_at,"
                           " predicted_at FROM prediction ORDER BY message_id").fetchall()


def test_rows_and_stamps_are_stored_as_peewee_stores_them(tmp_path):
    fast = db.connect(db.sqlite_url(tmp_path / "fast.sqlite"))
    assert db.write_results(fast, _rows(), []) == 9
    assert db.write_results(fast, _rows()[:4], []) == 0  # stored already: ignored
    fast.close()
    reference = db.connect(db.sqlite_url(tmp_path / "reference.sqlite"))
    db.Prediction.insert_many(_rows()).execute()
    read_back = {p.message_id: (p.produced_at, p.predicted_at) for p in db.Prediction.select()}
    reference.close()

    assert _table(tmp_path / "fast.sqlite") == _table(tmp_path / "reference.sqlite")
    stamps = {row[1]: row[10:] for row in _table(tmp_path / "fast.sqlite")}
    assert stamps["m0"] == ("2026-11-26 08:30:15.123456", "2026-01-02 03:04:05")
    assert stamps["m2"] == (None, "2026-01-02 03:04:05")
    assert read_back == {r["message_id"]: (r["produced_at"], r["predicted_at"]) for r in _rows()}


def test_a_row_that_leaves_out_nullable_fields_stores_null(tmp_path):
    database = db.connect(db.sqlite_url(tmp_path / "r.sqlite"))
    full, partial = _rows()[:2]
    del partial["true_label"], partial["produced_at"]
    assert db.write_results(database, [full, partial], []) == 2
    stored = {p.message_id: (p.true_label, p.produced_at) for p in db.Prediction.select()}
    database.close()
    assert stored == {"m0": (None, full["produced_at"]), "m1": (None, None)}


# --- a row that breaks NOT NULL is an error, never a row silently left out ----------------------

def _not_null(model) -> list[str]:
    return [f.name for f in model._meta.sorted_fields if not f.null and not isinstance(f, pw.AutoField)]


def _dead_letter(i: int) -> dict:
    return {"source": "local", "message_id": f"m{i}", "position": f"t@{i}", "fingerprint": f"f{i}",
            "reason": "not an image", "attributes": "{}", "payload": b"x", "payload_size": 1,
            "received_at": dt.datetime(2026, 1, 2)}


def _shadow_row(row: dict) -> dict:
    return {"source": row["source"], "message_id": row["message_id"], "model_version": "s1",
            "predicted_class": 1, "predicted_name": "c1", "confidence": 0.5, "true_label": None,
            "predicted_at": row["predicted_at"]}


TABLES = {"prediction": db.Prediction, "dead_letter": db.DeadLetter, "shadow_prediction": db.ShadowPrediction}


def _counts() -> dict[str, int]:
    return {name: model.select().count() for name, model in TABLES.items()}


_batches = itertools.count()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    database = db.connect(db.sqlite_url(tmp_path_factory.mktemp("not-null") / "r.sqlite"))
    yield database
    database.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), table=st.sampled_from(sorted(TABLES)), size=st.integers(1, 5), stored=st.integers(0, 5))
def test_a_row_that_breaks_not_null_is_refused_never_left_out(results, data, table, size, stored):
    """Whatever column of whichever row holds NULL (or NaN, which SQLite stores as NULL), the
    database's refusal reaches the caller: the batch fails with nothing of it committed, or, for
    the best-effort shadow rows, their savepoint is rolled back and says why. Rows already stored
    in the same batch (a redelivery) are still skipped as duplicates."""
    model = TABLES[table]
    column = data.draw(st.sampled_from(_not_null(model)), label="column")
    broken = data.draw(st.sampled_from([None, math.nan] if column == "confidence" else [None]), label="value")
    start = next(_batches) * 10  # each example's rows are new to the module's database
    rows = [dict(r, message_id=f"m{start + i}") for i, r in enumerate(_rows()[:size])] if table != "dead_letter" else []
    dead = [_dead_letter(start + i) for i in range(size)] if table == "dead_letter" else []
    shadow = [_shadow_row(r) for r in rows] if table == "shadow_prediction" else []
    earlier = min(stored, size)  # some of the batch stored already: a redelivery
    db.write_batch(results, rows[:earlier] if table == "prediction" else [], dead[:earlier])
    before = _counts()
    victim = data.draw(st.integers(0, size - 1), label="row")
    target = {"prediction": rows, "dead_letter": dead, "shadow_prediction": shadow}[table]
    target[victim] = {**target[victim], column: broken}

    if table == "shadow_prediction":
        written = db.write_batch(results, rows, dead, shadow)
        assert written.new == size and f"NOT NULL constraint failed: shadow_prediction.{column}" in \
            (written.shadow_rejected or ""), written
        assert _counts() == {**before, "prediction": before["prediction"] + size}
        return
    with pytest.raises(DatabaseError, match=f"NOT NULL constraint failed: {table}.{column}"):
        db.write_batch(results, rows, dead, shadow)
    assert _counts() == before
