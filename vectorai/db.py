"""The results database: Peewee models over SQLite (embedded default) or PostgreSQL.

All SQL goes through Peewee's parameterised queries. Every prediction row is unique on
(source, message_id), and inserts skip rows already there, so a redelivered message can never
produce a second row. They skip a conflict on that unique key only (``ON CONFLICT (key) DO
NOTHING``, never SQLite's ``INSERT OR IGNORE``, which also drops a row that breaks NOT NULL, as
a NaN confidence does there): any other refused row fails the batch.
"""

from __future__ import annotations

import datetime as dt
import functools
import weakref
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import peewee as pw

from vectorai import pg_copy
from vectorai.errors import DatabaseError
from vectorai.redact import mask_error, mask_url  # noqa: F401 - mask_url is part of this module's API
from vectorai.transports.budget import take_within_budget

database_proxy = pw.DatabaseProxy()

#: The INSERT path (a redelivered batch, skipping stored rows) sends rows in statements of at most this
#: many bytes of blob values (one larger row alone).
INSERT_PAGE_BYTES = 4 * 1024 * 1024

#: Dead letters keep at most this many bytes of the raw payload: enough to inspect, never a
#: way for a hostile stream to fill the database.
DEAD_LETTER_PAYLOAD_CAP = 64 * 1024


class _Base(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


def _answer_columns() -> tuple[pw.IntegerField, pw.CharField, pw.FloatField, pw.IntegerField]:
    """A model's answer for one message as both prediction tables store it: the class, its
    name, the confidence, and the true label when the message had one. Made in each table's
    class body, so that the columns keep their place there."""
    return pw.IntegerField(), pw.CharField(max_length=255), pw.FloatField(), pw.IntegerField(null=True)


class Prediction(_Base):
    """One classified message."""

    source = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=255)
    position = pw.CharField(max_length=255)
    image = pw.BlobField()
    content_type = pw.CharField(max_length=64)
    predicted_class, predicted_name, confidence, true_label = _answer_columns()
    model_version = pw.CharField(max_length=255)
    produced_at = pw.DateTimeField(null=True)
    predicted_at = pw.DateTimeField(index=True)
    #: What the review page ranks by (NULL in rows stored before they came): top-1 minus top-2
    #: class probability; the probability of the message's label (NULL unlabelled); 1 when the
    #: shadow model gave another class at predict time, else NULL (an index then finds them).
    margin = pw.FloatField(null=True)
    label_probability = pw.FloatField(null=True)
    shadow_disagrees = pw.SmallIntegerField(null=True)

    class Meta:
        indexes = ((("source", "message_id"), True), (("predicted_class", "margin"), False))


# "Review next" reads each class's least sure (and disputed) rows, and "suspicious labels" the
# least likely labels, from the start of an index instead of sorting the table. Partial indexes:
# a row that is not disputed or not labelled (most of a stream) costs its insert nothing here.
Prediction.add_index(Prediction.predicted_class, Prediction.margin, where=Prediction.shadow_disagrees.is_null(False),
                     name="prediction_disputed_class_margin")
Prediction.add_index(Prediction.label_probability, where=Prediction.label_probability.is_null(False),
                     name="prediction_label_probability")


class DeadLetter(_Base):
    """A message that could not be classified, with why, where it came from and its bytes.

    Unique on (source, position, fingerprint): a redelivered message is stored once, and new
    poison at a position that came before (a recreated Kafka topic, a new local queue file,
    whose offsets start again) is stored too. ``fingerprint`` is the SHA-256 of its attributes
    and whole payload."""

    source = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=255, null=True)
    position = pw.CharField(max_length=255)
    fingerprint = pw.CharField(max_length=64, default="")
    reason = pw.TextField()
    attributes = pw.TextField()
    payload = pw.BlobField()
    payload_size = pw.IntegerField()
    received_at = pw.DateTimeField()

    class Meta:
        indexes = ((("source", "position", "fingerprint"), True),)


class ShadowPrediction(_Base):
    """A second model's prediction for a message the primary model classified (shadow scoring):
    compare the two before moving the ``champion`` alias. Unique on (source, message_id,
    model_version), so a redelivery is stored once per model."""

    source = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=255)
    model_version = pw.CharField(max_length=255)
    predicted_class, predicted_name, confidence, true_label = _answer_columns()
    predicted_at = pw.DateTimeField()

    class Meta:
        indexes = ((("source", "message_id", "model_version"), True),)


class Review(_Base):
    """A person's correction of one prediction (``vectorai-results serve``): the class the image
    really is. One row per (source, message_id); a later review replaces the earlier one."""

    source = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=255)
    label = pw.IntegerField()
    reviewed_at = pw.DateTimeField()
    reviewer = pw.CharField(max_length=255)

    class Meta:
        indexes = ((("source", "message_id"), True),)


MODELS: tuple[type[pw.Model], ...] = (Prediction, DeadLetter, ShadowPrediction, Review)
#: Advisory lock key held while the tables are created (any constant; "vectorai" in ASCII).
_SCHEMA_LOCK = int.from_bytes(b"vectorai", "big") & 0x7FFFFFFFFFFFFFFF


@functools.cache  # per table, not per batch
def unique_key(model: type[pw.Model]) -> list[pw.Field]:
    """The columns of ``model``'s one unique index: the only conflict an insert may skip."""
    [names] = [index[0] for index in model._meta.indexes if isinstance(index, tuple) and index[1]]
    return [model._meta.fields[name] for name in names]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def connect(url: str, connect_timeout_s: int = 10) -> pw.Database:
    """Open the database at ``url``, bind the models to it and create missing tables."""
    from playhouse.db_url import connect as url_connect

    safe = mask_url(url)
    kwargs: dict[str, object] = {}
    if url.startswith(("postgres://", "postgresql://")):
        kwargs["connect_timeout"] = connect_timeout_s
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) not in ("", ":memory:"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseError(safe, f"cannot create its folder: {err.strerror}") from None
        # WAL lets the report command read while a run writes. FULL syncs the WAL at every
        # commit: a batch is acknowledged to its source right after, so its rows must survive a
        # power failure too (NORMAL only survives a crash of the process).
        kwargs["pragmas"] = {"journal_mode": "wal", "synchronous": "full", "busy_timeout": 30000}
    else:
        raise DatabaseError(safe, "unsupported URL; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    try:
        db = url_connect(url, **kwargs)
        db.connect(reuse_if_open=True)
        database_proxy.initialize(db)
        with db.atomic():
            if isinstance(db, pw.PostgresqlDatabase):
                # Two processes creating the same table at once collide inside PostgreSQL
                # ("duplicate key ... pg_type_typname_nsp_index") despite IF NOT EXISTS: one at a
                # time, under a transaction-scoped advisory lock.
                db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            _upgrade_dead_letters(db)
            _add_missing_columns(db, Prediction, (Prediction.margin, Prediction.label_probability,
                                                  Prediction.shadow_disagrees))
            db.create_tables(MODELS, safe=True)
    except (pw.PeeweeException, RuntimeError, ValueError, OSError) as err:
        # URL parsers and drivers may echo the URL or the password itself (peewee's "has no
        # database name" does).
        raise DatabaseError(safe, mask_error(_first_line(err), url)) from None
    return db


def _upgrade_dead_letters(db: pw.Database) -> None:
    """Give a dead-letter table made by an earlier version its ``fingerprint`` column, and its
    unique key the fingerprint, in place: its rows stay as they are (fingerprint '')."""
    table = DeadLetter._meta.table_name
    # create_tables(safe=True), right after, makes the new unique index.
    _add_missing_columns(db, DeadLetter, (DeadLetter.fingerprint,),
                         lambda migrator: [migrator.drop_index(table, f"{table}_source_position")])


def _add_missing_columns(db: pw.Database, model: type[pw.Model], fields: Sequence[pw.Field],
                         also: Callable[[Any], list] = lambda migrator: []) -> None:
    """Add ``fields`` to a table made by an earlier version (its rows keep the field's default,
    or NULL), with the operations ``also(migrator)`` gives, when any of them is missing."""
    table = model._meta.table_name
    present = {c.name for c in db.get_columns(table)} if db.table_exists(table) else None
    missing = [f for f in fields if present is not None and f.column_name not in present]
    if missing:
        from playhouse.migrate import SchemaMigrator, migrate

        migrator = SchemaMigrator.from_database(db)
        migrate(*(migrator.add_column(table, f.column_name, f) for f in missing), *also(migrator))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


class Written(NamedTuple):
    """What ``write_batch`` stored: how many prediction rows were new, and why the database
    refused the shadow model's rows (None when it took them, or there were none)."""

    new: int
    shadow_rejected: str | None = None


def write_results(db: pw.Database, predictions: Sequence[dict], dead_letters: Sequence[dict],
                  shadow: Sequence[dict] = ()) -> int:
    """``write_batch``: how many prediction rows were new."""
    return write_batch(db, predictions, dead_letters, shadow).new


def write_batch(db: pw.Database, predictions: Sequence[dict], dead_letters: Sequence[dict],
                shadow: Sequence[dict] = ()) -> Written:
    """Insert one batch's rows (and its shadow model's) in one transaction; rows already present
    (by their unique key) are skipped; any other row the database refuses fails the batch.

    The shadow rows go in a savepoint of their own: shadow scoring is best effort, so a shadow
    row the database refuses (a class name PostgreSQL cannot store: over 255 characters, or
    holding NUL; text that is not UTF-8, on either) rolls back only them, and says why.
    Raises DatabaseError, with nothing committed, when the database fails, so the caller must
    not acknowledge the batch.
    """
    try:
        try:
            return _write(db, predictions, dead_letters, shadow, copy=True)
        except _AlreadyStored:
            # A redelivery, or another consumer got there first: the batch again, in a new
            # transaction, skipping the rows that are stored.
            return _write(db, predictions, dead_letters, shadow, copy=False)
    except pw.PeeweeException as err:
        raise DatabaseError(mask_url(_url_of(db)), _first_line(err)) from None


class _AlreadyStored(Exception):
    """COPY met a row whose unique key is stored already; its transaction is rolled back."""


def _write(db: pw.Database, predictions: Sequence[dict], dead_letters: Sequence[dict], shadow: Sequence[dict],
           copy: bool) -> Written:
    if copy and not dead_letters and not shadow and isinstance(db, pw.PostgresqlDatabase) and not db.in_transaction():
        # Peewee's PostgreSQL connections autocommit, so a lone COPY is a transaction of its own:
        # all its rows or none, durable when it returns. One round trip instead of three (BEGIN,
        # COPY, COMMIT), each a wait for a server that shares the cores with the model.
        return Written(_insert_new_rows(db, Prediction, predictions, copy))
    with db.atomic():
        new = _insert_new_rows(db, Prediction, predictions, copy)
        for chunk in _chunks(dead_letters, 500):
            (DeadLetter.insert_many(chunk)
             .on_conflict(action="NOTHING", conflict_target=unique_key(DeadLetter)).execute())
        rejected = _insert_shadow_rows(db, shadow, copy) if shadow else None
    return Written(new, rejected)


def _insert_shadow_rows(db: pw.Database, rows: Sequence[dict], copy: bool) -> str | None:
    """The shadow rows in a savepoint: why the database refused them (rolled back to it), or None.
    Only a refusal of the rows' values is caught: the server's (DataError: too long), the
    driver's (ValueError: NUL for psycopg2's INSERT, a lone surrogate for either driver) or
    COPY's encoder's (pg_copy's DatabaseError: NUL, not UTF-8). A database that fails otherwise
    fails the batch, as for the primary rows; a stored row met by COPY rewrites the batch
    (_AlreadyStored)."""
    try:
        with db.atomic():
            _insert_new_rows(db, ShadowPrediction, rows, copy)
    except (pw.DataError, pw.IntegrityError, ValueError) as err:
        return f"{type(err).__name__}: {_first_line(err)}"
    except pw.DatabaseError as err:
        # Peewee's exception wrapper renames pg_copy's DatabaseError (by its class name) and
        # keeps it as ``orig``: only that one is a refused value.
        if isinstance(getattr(err, "orig", None), DatabaseError):
            return _first_line(err)
        raise
    return None


def _insert_new_rows(db: pw.Database, model: type[pw.Model], rows: Sequence[dict], copy: bool = False) -> int:
    """Insert ``rows`` (dicts by field name), skipping any whose unique key is already there;
    return how many were new.

    Never through Peewee's query builder, which renders SQL value by value in Python and cost
    more than classifying the batch. On PostgreSQL, with ``copy``, the batch is COPYed in (see
    ``_insert_postgres``); on SQLite, Peewee renders the parameterised one-row statement and the
    driver runs it per row, in C. The driver's row count says how many were new, so no SELECT
    counts them first.
    """
    if not rows:
        return 0
    fields = [f for f in model._meta.sorted_fields if not isinstance(f, pw.AutoField)]
    names = [f.name for f in fields]
    try:
        values = list(map(itemgetter(*names), rows))  # in C: a sixth of a per-row generator's cost
    except KeyError:  # a row that leaves out nullable fields: they are NULL
        values = [tuple(map(row.get, names)) for row in rows]
    with pw.__exception_wrapper__:
        if isinstance(db, pw.PostgresqlDatabase):
            return _insert_postgres(db, model, fields, values, copy)
        cursor = db.cursor()
        template = model.insert({f: None for f in fields}).on_conflict(action="NOTHING",
                                                                        conflict_target=unique_key(model))
        statement, _ = db.get_sql_context().sql(template).query()
        cursor.executemany(statement, _render_stamps(fields, values))
        return cursor.rowcount


def _render_stamps(fields: list[pw.Field], values: list[tuple]) -> list[tuple]:
    """The rows with each datetime as the text sqlite3's adapter writes (``isoformat(" ")``).

    That adapter is a Python function called per value, a fifth of the insert's cost; a batch
    shares a few stamps, so each distinct one is rendered once."""
    columns = [i for i, f in enumerate(fields) if isinstance(f, pw.DateTimeField)]
    if not columns:
        return values
    text: dict[dt.datetime, str] = {}

    def render(value: object) -> object:
        if not isinstance(value, dt.datetime):
            return value
        if value not in text:
            text[value] = value.isoformat(" ")
        return text[value]

    rendered = []
    for row in values:
        row = list(row)
        for i in columns:
            row[i] = render(row[i])
        rendered.append(tuple(row))
    return rendered


def _insert_postgres(db: pw.PostgresqlDatabase, model: type[pw.Model], fields: list[pw.Field],
                     values: list[tuple], copy: bool) -> int:
    from psycopg2 import errors, sql
    from psycopg2.extras import execute_values

    table = sql.Identifier(model._meta.table_name)
    columns = sql.SQL(", ").join(sql.Identifier(f.column_name) for f in fields)
    cursor = db.cursor()
    if copy:
        # COPY costs about a quarter of a multi-row INSERT per row (psycopg2 adapts every value on
        # its own; COPY's data is one buffer, binary where the column types allow: see
        # vectorai.pg_copy), but cannot skip stored rows: a batch
        # that has one raises _AlreadyStored and is written again with the INSERT below. (A
        # savepoint around COPY would do that without repeating the transaction, but costs
        # two more round trips on every batch to save work on the rare redelivered one.)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table, columns).as_string(cursor)
        names = [f.column_name for f in fields]
        encoders = _binary_encoders(db, cursor, model._meta.table_name, names)
        try:
            if encoders is None:
                pg_copy.copy_text(cursor, statement, values)
            else:
                pg_copy.copy_binary(cursor, statement, names, encoders, values)
        except errors.UniqueViolation:
            raise _AlreadyStored() from None
        return len(values)
    # Identifiers composed by psycopg2, values sent as parameters. psycopg2 renders a page as
    # one statement, its bytea values escaped (2-4 times their size): pages of at most
    # INSERT_PAGE_BYTES of values, each INSERT's row count added up.
    key = sql.SQL(", ").join(sql.Identifier(f.column_name) for f in unique_key(model))
    statement = sql.SQL("INSERT INTO {} ({}) VALUES %s ON CONFLICT ({}) DO NOTHING").format(table, columns, key)
    blobs = [i for i, f in enumerate(fields) if isinstance(f, pw.BlobField)]
    sizes = [sum(len(row[i] or b"") for i in blobs) for row in values] if blobs else [0] * len(values)
    new = start = 0
    while start < len(values):
        count = take_within_budget(sizes[start:], len(values), INSERT_PAGE_BYTES)
        execute_values(cursor, statement, values[start:start + count], page_size=count)
        new += cursor.rowcount
        start += count
    return new


#: Per database, per table: the binary COPY encoders of its columns (None: text format).
_ENCODERS: "weakref.WeakKeyDictionary[pw.Database, dict[tuple, list | None]]" = weakref.WeakKeyDictionary()


def _binary_encoders(db: pw.Database, cursor, table: str, columns: list[str]) -> list | None:
    """The binary COPY encoders for ``columns``, from the table's own column types (read once)."""
    known = _ENCODERS.setdefault(db, {})
    key = (table, tuple(columns))
    if key not in known:
        known[key] = pg_copy.binary_encoders(pg_copy.column_types(cursor, table), columns)
    return known[key]


def _chunks(rows: Sequence[dict], size: int) -> Iterable[Sequence[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _url_of(db: pw.Database) -> str:
    if isinstance(db, pw.PostgresqlDatabase):
        params = db.connect_params
        return f"postgresql://{params.get('user', '')}@{params.get('host', '')}:{params.get('port', '')}/{db.database}"
    return f"sqlite:///{db.database}"


def latest_predictions(limit: int = 20) -> list[Prediction]:
    return list(Prediction.select().order_by(Prediction.predicted_at.desc(), Prediction.id.desc()).limit(limit))


def summary() -> dict[str, object]:
    """Counts per class, labelled accuracy and dead letters, for the results command."""
    per_class = {
        name: count
        for name, count in Prediction.select(Prediction.predicted_name, pw.fn.COUNT(Prediction.id))
        .group_by(Prediction.predicted_name).tuples()
    }
    labelled = Prediction.select().where(Prediction.true_label.is_null(False))
    correct = labelled.where(Prediction.true_label == Prediction.predicted_class).count()
    total_labelled = labelled.count()
    reasons = {
        reason: count
        for reason, count in DeadLetter.select(DeadLetter.reason, pw.fn.COUNT(DeadLetter.id))
        .group_by(DeadLetter.reason).tuples()
    }
    return {
        "predictions": Prediction.select().count(),
        "per_class": per_class,
        "labelled": total_labelled,
        "accuracy": (correct / total_labelled) if total_labelled else None,
        "dead_letters": DeadLetter.select().count(),
        "dead_letter_reasons": reasons,
        "last_predicted_at": (Prediction.select(pw.fn.MAX(Prediction.predicted_at)).scalar()),
    }


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
