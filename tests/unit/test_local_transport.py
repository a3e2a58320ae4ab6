import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vectorai.errors import ConfigError
from vectorai.messages import encode_image
from vectorai.transports import open_transport, parse_sources


def send(transport, n, start=0):
    transport.publish([encode_image(np.zeros((2, 2), np.uint8), f"m{i}", encoding="raw") for i in range(start, start + n)])
    transport.flush(5)


def test_messages_are_redelivered_until_acknowledged(tmp_path):
    with open_transport("local", root=tmp_path, topic="images") as producer:
        send(producer, 5)
    with open_transport("local", root=tmp_path, topic="images") as consumer:
        first = consumer.consume_batch(3, 100)
        assert [m.key for m in first] == ["m0", "m1", "m2"]
        # not acknowledged: a new consumer (a restarted process) starts from the same place
    with open_transport("local", root=tmp_path, topic="images") as consumer:
        again = consumer.consume_batch(3, 100)
        assert [m.key for m in again] == ["m0", "m1", "m2"]
        consumer.acknowledge(again)
        rest = consumer.consume_batch(10, 100)
        assert [m.key for m in rest] == ["m3", "m4"]
        consumer.release(rest)
        assert [m.key for m in consumer.consume_batch(10, 100)] == ["m3", "m4"]
    with open_transport("local", root=tmp_path, topic="images", group="other") as other:
        assert len(other.consume_batch(10, 100)) == 5  # groups are independent


def test_empty_queue_waits_about_the_timeout(tmp_path):
    import time

    with open_transport("local", root=tmp_path, topic="empty") as consumer:
        started = time.monotonic()
        assert consumer.consume_batch(10, 300) == []
        assert 0.25 <= time.monotonic() - started < 2


def test_producer_in_another_process_is_seen(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from vectorai.messages import encode_image
        from vectorai.transports import open_transport
        with open_transport("local", root={str(tmp_path)!r}, topic="x") as t:
            t.publish([encode_image(np.ones((3, 3), np.uint8), "p%d" % i) for i in range(4)])
            t.flush(5)
    """)
    with open_transport("local", root=tmp_path, topic="x") as consumer:
        assert consumer.consume_batch(10, 50) == []
        subprocess.run([sys.executable, "-c", code], check=True)
        got = consumer.consume_batch(10, 2000)
    assert sorted(m.key for m in got) == ["p0", "p1", "p2", "p3"]


def test_unknown_transport_and_bad_names():
    with pytest.raises(ConfigError, match="unknown transport 'rabbit'"):
        open_transport("rabbit")
    with pytest.raises(ConfigError, match="sources"):
        parse_sources("kafka,kafka")
    with pytest.raises(ConfigError, match="local.topic"):
        open_transport("local", root="/tmp", topic="../etc")


def test_published_messages_and_stored_rows_wait_for_the_disk_acknowledgements_need_not(tmp_path):
    """A power failure may lose an acknowledgement (redelivery, ignored by the database) but
    never a published message or a stored row that was acknowledged."""
    from vectorai import db as results_db

    full, normal = 2, 1  # PRAGMA synchronous values
    with open_transport("local", root=tmp_path, topic="t") as queue:
        queue.publish([encode_image(np.zeros((4, 4), np.uint8), "m1")])
        queue.flush(5)
        assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == full
        queue.acknowledge(queue.consume_batch(10, 100))
        assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == normal
        queue.publish([encode_image(np.zeros((4, 4), np.uint8), "m2")])
        queue.flush(5)
        assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == full
        assert [m.key for m in queue.consume_batch(10, 100)] == ["m2"]
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    assert database.execute_sql("PRAGMA synchronous").fetchone()[0] == full
    database.close()
