"""The PostgreSQL URL from the session fixture works with peewee, and survives a restart."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.postgres


def _table(database, name: str):
    import peewee

    class Probe(peewee.Model):
        label = peewee.CharField()

        class Meta:
            table_name = name

    Probe._meta.set_database(database)
    return Probe


def test_url_works_with_peewee(postgres_url):
    from playhouse.db_url import connect

    database = connect(postgres_url)
    probe = _table(database, f"probe_{uuid.uuid4().hex[:8]}")
    try:
        database.create_tables([probe])
        probe.create(label="hello")
        assert [row.label for row in probe.select()] == ["hello"]
        database.drop_tables([probe])
    finally:
        database.close()


def test_data_survives_a_restart(postgres_server):
    from playhouse.db_url import connect

    database = connect(postgres_server.address)
    probe = _table(database, f"probe_{uuid.uuid4().hex[:8]}")
    database.create_tables([probe])
    probe.create(label="kept")
    database.close()

    postgres_server.stop()
    assert postgres_server.restart() == postgres_server.address

    database.connect()
    try:
        assert [row.label for row in probe.select()] == ["kept"]
        database.drop_tables([probe])
    finally:
        database.close()
