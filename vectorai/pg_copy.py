"""Rows into PostgreSQL with COPY, in its binary format where the table's column types allow.

Why binary: the server parses COPY's text format character by character (a bytea in hex is two
characters per byte, a timestamp is read back from text), and that was most of its work. On
the development VM, a 256-row batch of prediction rows cost the server 17-21 µs of CPU per row
in text and 9-11 in binary (24-27 against 14-15 with 784-byte images); the server shares the
cores with the model. The binary format needs each value in exactly its column's type, so the
types are read from the table itself, and a table with a type not listed here gets the text
format.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from itertools import chain, repeat
from typing import Callable, Sequence

from vectorai.errors import DatabaseError

_LENGTH = struct.Struct(">i").pack
_NULL = _LENGTH(-1)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
_TRAILER = struct.pack(">h", -1)
_POSTGRES_EPOCH = dt.datetime(2000, 1, 1)


def _fixed(fmt: str) -> Callable[[list], list[bytes]]:
    """A column of fixed-size values: the length, then the value packed as ``fmt``."""
    pack = struct.Struct(">i" + fmt).pack
    size = struct.calcsize(">" + fmt)

    def encode(values: list) -> list[bytes]:
        return [_NULL if v is None else pack(size, v) for v in values]

    return encode


def _text(values: list) -> list[bytes]:
    if "\x00" in "".join(filter(None, values)):  # one scan of the column, in C
        raise ValueError("a text value contains a NUL character, which PostgreSQL cannot store")
    encoded = [None if v is None else v.encode("utf-8") for v in values]
    return [_NULL if v is None else _LENGTH(len(v)) + v for v in encoded]


def _bytes(values: list) -> list[bytes]:
    return [_NULL if v is None else _LENGTH(len(v)) + bytes(v) for v in values]


_TIMESTAMP = struct.Struct(">iq").pack


def _timestamp(values: list) -> list[bytes]:
    # Microseconds since 2000-01-01, of naive UTC datetimes; a batch shares a few stamps.
    cache: dict[dt.datetime, bytes] = {}
    out = []
    for v in values:
        if v is None:
            out.append(_NULL)
        elif v in cache:
            out.append(cache[v])
        else:
            out.append(cache.setdefault(v, _TIMESTAMP(8, (v - _POSTGRES_EPOCH) // dt.timedelta(microseconds=1))))
    return out


#: Binary encoders by ``information_schema.columns.data_type``. Any other type: text format.
BINARY_ENCODERS: dict[str, Callable[[list], list[bytes]]] = {
    "character varying": _text,
    "text": _text,
    "bytea": _bytes,
    "smallint": _fixed("h"),
    "integer": _fixed("i"),
    "bigint": _fixed("q"),
    "real": _fixed("f"),
    "double precision": _fixed("d"),
    "timestamp without time zone": _timestamp,
}


def column_types(cursor, table: str) -> dict[str, str]:
    """``data_type`` of each column of ``table`` in the current schema."""
    cursor.execute("SELECT column_name, data_type FROM information_schema.columns "
                   "WHERE table_schema = current_schema() AND table_name = %s", (table,))
    return dict(cursor.fetchall())


def binary_encoders(types: dict[str, str], columns: Sequence[str]) -> list[Callable[[list], list[bytes]]] | None:
    """One encoder per column, or None when some column's type has no binary encoder here."""
    encoders = [BINARY_ENCODERS.get(types.get(column, "")) for column in columns]
    return None if any(e is None for e in encoders) else encoders  # type: ignore[return-value]


def copy_binary(cursor, statement: str, names: Sequence[str],
                encoders: Sequence[Callable[[list], list[bytes]]], values: Sequence[tuple]) -> None:
    """COPY ``values`` (rows of the statement's columns, ``names``) in the binary format.

    Built column by column: each column holds one type, so it is encoded by one comprehension,
    then the rows are interleaved by one join in C."""
    columns = []
    for name, encode, column in zip(names, encoders, zip(*values)):
        try:
            columns.append(encode(list(column)))
        except (ValueError, TypeError, OverflowError, struct.error) as err:
            raise DatabaseError("postgresql", f"column {name}: cannot store a value: {err}") from None
    count = struct.pack(">h", len(encoders))
    data = b"".join(chain((_HEADER,), chain.from_iterable(zip(repeat(count), *columns)), (_TRAILER,)))
    cursor.copy_expert(statement + " WITH (FORMAT binary)", io.BytesIO(data), size=1 << 20)


#: COPY text format: these characters in a value must be backslash-escaped.
_COPY_SPECIAL = ("\\", "\t", "\n", "\r")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_NULL = "\\N"


def _text_column(values: list) -> list[str]:
    """One column of a batch in COPY's text format (the client encoding is UTF-8).

    Column by column, not value by value: each column holds one type, so it is formatted by one
    C-level map or one comprehension, and a text column is scanned for characters to escape
    once, as a whole.
    """
    present = [v for v in values if v is not None]
    if not present:
        return [_COPY_NULL] * len(values)
    sample = present[0]
    if isinstance(sample, str):
        text = "".join(present)
        if "\x00" in text:
            raise DatabaseError("postgresql", "a text value contains a NUL character, which PostgreSQL cannot store")
        if any(special in text for special in _COPY_SPECIAL):
            formatted = [v.translate(_COPY_ESCAPES) if v is not None else _COPY_NULL for v in values]
        else:
            formatted = [v if v is not None else _COPY_NULL for v in values]
    elif isinstance(sample, (bytes, bytearray, memoryview)):
        # bytea hex format, its backslash escaped for COPY
        formatted = ["\\\\x" + bytes(v).hex() if v is not None else _COPY_NULL for v in values]
    elif isinstance(sample, dt.datetime):
        # Many rows share a timestamp (a batch's predicted_at, a stream's produced_at).
        cache: dict[dt.datetime, str] = {}
        formatted = [_COPY_NULL if v is None else cache.get(v) or cache.setdefault(v, v.isoformat(" "))
                     for v in values]
    elif isinstance(sample, float):
        formatted = [repr(float(v)) if v is not None else _COPY_NULL for v in values]  # exact; nan/inf too
    else:
        formatted = [str(int(v)) if v is not None else _COPY_NULL for v in values]
    return formatted


def copy_text(cursor, statement: str, values: Sequence[tuple]) -> None:
    """COPY ``values`` in the text format: for tables with column types the binary path lacks."""
    columns = [_text_column(list(column)) for column in zip(*values)]
    text = "\n".join(map("\t".join, zip(*columns))) + "\n"
    cursor.copy_expert(statement, io.BytesIO(text.encode("utf-8")), size=1 << 20)
