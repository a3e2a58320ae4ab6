"""vectorai.db.write_results on SQLite stores what Peewee's own insert stores, value for value."""

from __future__ import annotations

import datetime as dt
import sqlite3

from vectorai import db


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
