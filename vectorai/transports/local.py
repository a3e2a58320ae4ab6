"""The embedded transport: a durable queue in a SQLite file, needing no server.

One file per topic under ``root``. Producers append rows; each consumer group has a committed
position that moves only when ``acknowledge`` is called, i.e. after the caller's results are
committed, so a crash between consuming and acknowledging redelivers the batch. Separate
processes may produce and consume at the same time (SQLite WAL).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

from vectorai.errors import ConfigError, TransportError
from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport
from vectorai.transports.budget import take_within_budget
from vectorai.transports.nesting import TooDeep, dump_attributes, parse_attributes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_POLL_INTERVAL_S = 0.05


#: How long a commit waits for the disk: FULL for published messages, NORMAL for acknowledgements.
_SYNCHRONOUS = {"FULL": "PRAGMA synchronous=FULL", "NORMAL": "PRAGMA synchronous=NORMAL"}


class LocalTransport(Transport):
    name = "local"

    def __init__(self, root: str | Path, topic: str, group: str = "vectorai-predict", **_ignored: object) -> None:
        for setting, value in (("local.topic", topic), ("local.group", group)):
            if not _NAME.match(value or ""):
                raise ConfigError(setting, f"{value!r} is not a valid name (letters, digits, . _ -)")
        self.path = Path(root) / f"{topic}.sqlite"
        self.topic = topic
        self.group = group
        self._pending: list[OutgoingMessage] = []
        self._delivered_up_to: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE) below.
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SYNCHRONOUS["FULL"])
            self._sync_level = "FULL"
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages (offset INTEGER PRIMARY KEY AUTOINCREMENT,"
                " key TEXT, attributes TEXT NOT NULL, payload BLOB NOT NULL, published_at REAL NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cursors (group_name TEXT PRIMARY KEY, committed INTEGER NOT NULL)"
            )
        except sqlite3.Error as err:
            raise TransportError("local", f"cannot open queue {self.path}: {err}") from None

    def publish(self, messages: Iterable[OutgoingMessage]) -> None:
        self._pending.extend(messages)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Append every pending message in one transaction; durable once this returns."""
        if not self._pending:
            return
        now = time.time()
        rows = [(_key_column(m.key), self._attributes_column(m), m.payload, now) for m in self._pending]
        try:
            self._synchronous("FULL")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO messages (key, attributes, payload, published_at) VALUES (?, ?, ?, ?)", rows
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise TransportError("local", f"cannot append to {self.path}: {err}") from None
        self._pending.clear()

    def _attributes_column(self, message: OutgoingMessage) -> str:
        try:
            return dump_attributes(message.attributes)
        except (TooDeep, TypeError, ValueError) as err:
            raise TransportError("local", f"cannot append message {_shown(message.key)} to {self.path}: "
                                          f"its attributes cannot be written as JSON ({err})") from None

    def _synchronous(self, level: str) -> None:
        if level != self._sync_level:
            self._db.execute(_SYNCHRONOUS[level])
            self._sync_level = level

    def _committed(self) -> int:
        row = self._db.execute("SELECT committed FROM cursors WHERE group_name = ?", (self.group,)).fetchone()
        return row[0] if row else 0

    def consume_batch(self, max_messages: int, timeout_ms: int) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            start = self._delivered_up_to if self._delivered_up_to is not None else self._committed()
            try:
                rows = self._db.execute(
                    "SELECT offset, attributes, payload FROM messages WHERE offset > ? ORDER BY offset LIMIT ?",
                    (start, self._within_read_bytes(start, max_messages)),
                ).fetchall()
            except sqlite3.Error as err:
                raise TransportError("local", f"cannot read {self.path}: {err}") from None
            if rows:
                self._delivered_up_to = rows[-1][0]
                return [self._received(offset, attributes, payload) for offset, attributes, payload in rows]
            if time.monotonic() >= deadline:
                return []
            time.sleep(_POLL_INTERVAL_S)

    def _within_read_bytes(self, start: int, max_messages: int) -> int:
        """How many rows after ``start`` to read so that their payloads stay within
        ``max_read_bytes`` (at least one). ``length()`` of a BLOB takes its size from the row's
        header, so this reads no payload."""
        if self.max_read_bytes is None:
            return max_messages
        sizes = [size or 0 for (size,) in self._db.execute(
            "SELECT length(payload) FROM messages WHERE offset > ? ORDER BY offset LIMIT ?", (start, max_messages))]
        return max(take_within_budget(sizes, max_messages, self.max_read_bytes), 1)

    def _received(self, offset: int, attributes: object, payload: object) -> ReceivedMessage:
        """The row as a message. SQLite keeps any type in any column, so a queue written by
        another producer may hold TEXT, a number or NULL where a BLOB or a JSON object belongs:
        such a row becomes a message with a problem, which the decoder dead-letters, with what
        it holds kept as bytes."""
        problems = []
        try:
            attrs = parse_attributes(attributes)  # raises TypeError for NULL or a number
            if not isinstance(attrs, dict):
                raise ValueError("not an object")
        except TooDeep as err:
            attrs = {}
            problems.append(str(err))
        except (ValueError, TypeError):
            attrs = {}
            problems.append(f"attributes {_shown(attributes)} are not a JSON object")
        # Values stay as the producer wrote them: the decoder refuses one that is not a string,
        # where str() would have turned an id of null into "None" and 1 into "1" (another id).
        if not isinstance(payload, bytes):
            problems.append(f"payload is {_SQLITE_TYPES.get(type(payload), type(payload).__name__)}, not a BLOB")
            payload = b"" if payload is None else str(payload).encode("utf-8", "surrogatepass")
        return ReceivedMessage(source=self.name, payload=payload, attributes=attrs,
                               position=f"{self.topic}@{offset}", handle=offset,
                               problem="; ".join(problems) or None)

    def acknowledge(self, messages: Sequence[ReceivedMessage]) -> None:
        if not messages:
            return
        newest = max(int(m.handle) for m in messages)
        try:
            # An acknowledgement lost to a power failure only redelivers rows the database
            # already has, so it need not wait for the disk (published messages do: see flush).
            self._synchronous("NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO cursors (group_name, committed) VALUES (?, ?) ON CONFLICT(group_name)"
                " DO UPDATE SET committed = MAX(committed, excluded.committed)",
                (self.group, newest),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            raise TransportError("local", f"cannot commit position in {self.path}: {err}") from None

    def release(self, messages: Sequence[ReceivedMessage]) -> None:
        # Deliver again from the committed position on the next consume.
        self._delivered_up_to = None

    def lag(self) -> int:
        """Messages not yet acknowledged by this group."""
        return self._db.execute("SELECT COUNT(*) FROM messages WHERE offset > ?", (self._committed(),)).fetchone()[0]

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def close(self) -> None:
        self._db.close()


_SQLITE_TYPES = {str: "TEXT", int: "an INTEGER", float: "a REAL", type(None): "NULL"}


def _shown(value: object) -> str:
    """A column's value, short, for a reason."""
    if value is None:
        return "NULL"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_column(key: object) -> str | None:
    """The ``key`` column, for people reading the queue file (consumers read ``attributes``): the
    id when it is storable text, else NULL. A bad id still goes out, for the consumer to
    dead-letter with its reason, instead of failing the producer's whole flush."""
    if not isinstance(key, str):
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return key
