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

import binascii
import datetime as dt
import struct
from itertools import chain, repeat
from typing import Callable, Iterator, Sequence

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
    # The length alone: the value follows it as its own piece of the stream (see copy_binary),
    # never copied into a longer buffer.
    return [_NULL if v is None else _LENGTH(len(v)) for v in values]


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


#: COPY data goes to the server in pieces of about this size (psycopg2 asks for this much).
COPY_CHUNK_BYTES = 1 << 20


class _Pieces:
    """A file-like ``read`` over an iterator of byte strings, for ``copy_expert``.

    Small pieces (lengths, numbers, names) are joined into reads of about ``COPY_CHUNK_BYTES``;
    a piece that size or larger (an image) is handed over as it is. So the COPY stream holds
    one chunk and no copy of any payload, where one joined buffer held the whole batch again
    (and ``bytes(value)`` per value a third time)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._large: bytes | None = None  # a large piece met while joining small ones

    def read(self, size: int = COPY_CHUNK_BYTES) -> bytes:
        if self._large is not None:
            piece, self._large = self._large, None
            return piece
        joined: list[bytes] = []
        total = 0
        for piece in self._pieces:
            if len(piece) >= size:
                if not joined:
                    return piece
                self._large = piece
                break
            joined.append(piece)
            total += len(piece)
            if total >= size:
                break
        return b"".join(joined)


def copy_binary(cursor, statement: str, names: Sequence[str],
                encoders: Sequence[Callable[[list], list[bytes]]], values: Sequence[tuple]) -> None:
    """COPY ``values`` (rows of the statement's columns, ``names``) in the binary format.

    Encoded column by column: each column holds one type, so it is encoded by one
    comprehension; a bytea column gives only each value's length, and the value itself
    follows it in the stream as it is. The rows are then interleaved into the stream as the
    server reads it (``_Pieces``)."""
    columns = []
    for name, encode, column in zip(names, encoders, zip(*values)):
        try:
            if encode is _bytes:  # bytes as they are (a bytearray copied once); anything else refused
                column = [v if v is None or type(v) is bytes else bytes(v) for v in column]
            encoded = encode(list(column))
        except (ValueError, TypeError, OverflowError, struct.error) as err:
            raise DatabaseError("postgresql", f"column {name}: cannot store a value: {err}") from None
        columns.append(encoded)
        if encode is _bytes:
            columns.append([b"" if v is None else v for v in column])  # the values, after their lengths
    count = struct.pack(">h", len(encoders))
    pieces = chain((_HEADER,), chain.from_iterable(zip(repeat(count), *columns)), (_TRAILER,))
    cursor.copy_expert(statement + " WITH (FORMAT binary)", _Pieces(pieces), size=COPY_CHUNK_BYTES)


#: COPY text format: these characters in a value must be backslash-escaped.
_COPY_SPECIAL = ("\\", "\t", "\n", "\r")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_NULL = "\\N"


def _text_column(values: list) -> Sequence[str]:
    """One column of a batch in COPY's text format (the client encoding is UTF-8).

    Column by column, not value by value: each column holds one type, so it is formatted by one
    C-level map or one comprehension, and a text column is scanned for characters to escape
    once, as a whole. A bytea column is the exception: its hex text, twice the size of the
    bytes, is made one value at a time as the stream reaches it (``_HexColumn``).
    """
    present = [v for v in values if v is not None]
    if not present:
        return [_COPY_NULL] * len(values)
    sample = present[0]
    if isinstance(sample, (bytes, bytearray, memoryview)):
        return _HexColumn(values)
    if isinstance(sample, str):
        text = "".join(present)
        if "\x00" in text:
            raise DatabaseError("postgresql", "a text value contains a NUL character, which PostgreSQL cannot store")
        if any(special in text for special in _COPY_SPECIAL):
            formatted = [v.translate(_COPY_ESCAPES) if v is not None else _COPY_NULL for v in values]
        else:
            formatted = [v if v is not None else _COPY_NULL for v in values]
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


class _HexColumn(Sequence):
    """A bytea column in COPY's text format, each value made when the stream reaches it: its
    hex digits as bytes (``_text_pieces`` writes the escaped ``\\x`` before them)."""

    def __init__(self, values: list) -> None:
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):  # type: ignore[override]
        value = self._values[index]
        return _COPY_NULL if value is None else binascii.hexlify(value)


def _text_pieces(columns: list[Sequence]) -> Iterator[bytes]:
    """The rows in COPY's text format, as pieces: a row's text fields together, each bytea
    value's hex digits on their own (never joined into a longer string)."""
    if not any(isinstance(column, _HexColumn) for column in columns):
        for row in zip(*columns):
            yield ("\t".join(row) + "\n").encode("utf-8")
        return
    last = len(columns) - 1
    for row in range(len(columns[0]) if columns else 0):
        # By index, holding no row tuple: only one value's hex digits are alive at a time.
        text: list[str] = []
        for i, column in enumerate(columns):
            value = column[row]
            if isinstance(value, bytes):
                text.append("\\\\x")  # bytea hex format, its backslash escaped for COPY
                yield "".join(text).encode("utf-8")
                yield value
                value, text = None, []  # the hex digits are the server's now: let them go
            else:
                text.append(value)
            text.append("\n" if i == last else "\t")
        yield "".join(text).encode("utf-8")


def copy_text(cursor, statement: str, values: Sequence[tuple]) -> None:
    """COPY ``values`` in the text format: for tables with column types the binary path lacks.

    Streamed a row at a time: the batch is never one string (a bytea in hex is twice its bytes,
    and one string of the batch, then its UTF-8 copy, made the whole about 7 times the
    payloads)."""
    columns = [_text_column(list(column)) for column in zip(*values)]
    cursor.copy_expert(statement, _Pieces(_text_pieces(columns)), size=COPY_CHUNK_BYTES)
