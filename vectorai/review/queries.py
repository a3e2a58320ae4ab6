"""What the results page reads and writes, as Peewee queries over the pipeline's tables.

The grid never selects the image column (a page of rows stays a few kilobytes whatever the
images weigh) and pages by keyset (``id < the last id shown``), so a later page costs what the
first one does on a table of any size.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import peewee as pw

from vectorai.db import DeadLetter, Prediction, Review, ShadowPrediction
from vectorai.errors import ReviewError

T = TypeVar("T")

#: Confidence histogram bins (equal width over [0, 1]).
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class GridFilter:
    """The grid's filters; None / False: not filtered on."""

    predicted_class: int | None = None
    true_label: int | None = None
    below: float | None = None
    wrong: bool = False
    shadow_disagrees: bool = False
    unreviewed: bool = False
    source: str | None = None
    model_version: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass
class Page:
    rows: list[dict]
    #: The id to pass as ``after`` for the next page; None on the last page.
    next_after: int | None


def _same_message(model: type[pw.Model]) -> pw.Expression:
    return (model.source == Prediction.source) & (model.message_id == Prediction.message_id)


def prediction_page(filters: GridFilter, after: int | None = None, limit: int = 60) -> Page:
    """One page of predictions, newest first, with each row's review and shadow class."""
    query = card_rows().order_by(Prediction.id.desc()).limit(limit + 1)
    for condition in conditions(filters):
        query = query.where(condition)
    return _keyset_page(query, Prediction.id, after, limit)


def card_rows() -> pw.ModelSelect:
    """What a card shows of each prediction: its columns (not the image), its review and the
    shadow model's class."""
    shadow_name = (ShadowPrediction.select(ShadowPrediction.predicted_name)
                   .where(_same_message(ShadowPrediction)).order_by(ShadowPrediction.id).limit(1))
    shadow_class = (ShadowPrediction.select(ShadowPrediction.predicted_class)
                    .where(_same_message(ShadowPrediction)).order_by(ShadowPrediction.id).limit(1))
    return (Prediction
            .select(Prediction.id, Prediction.source, Prediction.message_id, Prediction.predicted_class,
                    Prediction.predicted_name, Prediction.confidence, Prediction.true_label,
                    Prediction.model_version, Prediction.predicted_at, Prediction.content_type,
                    Prediction.margin, Prediction.label_probability,
                    Review.label.alias("review_label"), Review.reviewer.alias("reviewer"),
                    shadow_class.alias("shadow_class"), shadow_name.alias("shadow_name"))
            .join(Review, pw.JOIN.LEFT_OUTER, on=_same_message(Review)))


def _keyset_page(query: pw.Query, key: pw.Field, after: int | None, limit: int) -> Page:
    """The rows of ``query`` (newest first, ``limit + 1`` asked) below ``after``: one row more
    than a page tells whether another page follows, without counting the table."""
    if after is not None:
        query = query.where(key < after)
    rows = list(query.dicts())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["id"] if more and rows else None)


def conditions(filters: GridFilter) -> list[pw.Expression]:
    """The WHERE conditions of ``filters``."""
    found: list[pw.Expression] = []
    if filters.predicted_class is not None:
        found.append(Prediction.predicted_class == filters.predicted_class)
    if filters.true_label is not None:
        found.append(Prediction.true_label == filters.true_label)
    if filters.below is not None:
        found.append(Prediction.confidence < filters.below)
    if filters.wrong:
        found.append(Prediction.true_label.is_null(False) & (Prediction.true_label != Prediction.predicted_class))
    if filters.shadow_disagrees:
        found.append(shadow_disagrees())
    if filters.unreviewed:
        found.append(unreviewed())
    if filters.source:
        found.append(Prediction.source == filters.source)
    if filters.model_version:
        found.append(Prediction.model_version == filters.model_version)
    if filters.since is not None:
        found.append(Prediction.predicted_at >= filters.since)
    if filters.until is not None:
        found.append(Prediction.predicted_at < filters.until)
    return found


def shadow_disagrees() -> pw.Expression:
    """A shadow model predicted another class for the row's message."""
    return pw.fn.EXISTS(ShadowPrediction.select(ShadowPrediction.id)
                        .where(_same_message(ShadowPrediction)
                               & (ShadowPrediction.predicted_class != Prediction.predicted_class)))


def unreviewed() -> pw.Expression:
    """No one has reviewed the row's message yet."""
    # NOT EXISTS, not "the LEFT JOIN's review.id IS NULL": PostgreSQL plans that one as a
    # join of the whole table, estimated at one row, and sorts it (5 s at 1,000,000 rows);
    # NOT EXISTS is an anti-join that walks the id index and stops at the page's end.
    return ~pw.fn.EXISTS(Review.select(Review.id).where(_same_message(Review)))


def prediction_image(row_id: int) -> tuple[bytes, str] | None:
    """The stored payload and content-type of prediction ``row_id``."""
    row = (Prediction.select(Prediction.image, Prediction.content_type)
           .where(Prediction.id == row_id).tuples().first())
    return None if row is None else (bytes(row[0]), row[1])


@dataclass
class Facets:
    """What the filters offer: class index -> name, sources and model versions."""

    classes: dict[int, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)


class Cached(Generic[T]):
    """A value read at most once per ``ttl_s``: the facets and the label thresholds are each a
    scan of the whole table, which a page of the grid must not pay for on every request."""

    def __init__(self, read: Callable[[], T], ttl_s: float = 60.0) -> None:
        self.read, self.ttl_s = read, ttl_s
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at = 0.0

    def get(self) -> T:
        with self._lock:
            if self._value is None or time.monotonic() - self._read_at > self.ttl_s:
                self._value, self._read_at = self.read(), time.monotonic()
            return self._value




def read_facets() -> Facets:
    classes = {int(c): str(name) for c, name in
               Prediction.select(Prediction.predicted_class, pw.fn.MIN(Prediction.predicted_name))
               .group_by(Prediction.predicted_class).tuples()}
    # Classes the model never predicted still get a key (named by their index), so a correction
    # can pick them: up to the largest true label seen.
    largest = Prediction.select(pw.fn.MAX(Prediction.true_label)).scalar()
    for index in range(max([*classes, -1, largest if largest is not None else -1]) + 1):
        classes.setdefault(index, str(index))
    sources = [s for (s,) in Prediction.select(Prediction.source).distinct().order_by(Prediction.source).tuples()]
    versions = [v for (v,) in Prediction.select(Prediction.model_version).distinct()
                .order_by(Prediction.model_version).tuples()]
    return Facets(dict(sorted(classes.items())), sources, versions)


@dataclass
class VersionSummary:
    """What the tables say about one model version's predictions."""

    model_version: str
    predictions: int
    labelled: int
    correct: int
    class_mix: list[tuple[str, int]]
    confidence_bins: list[int]
    shadow: list[dict]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def version_summaries() -> list[VersionSummary]:
    """Per model version: counts, labelled accuracy, class mix, confidence histogram and the
    agreement of each shadow model that scored the same messages."""
    summaries = []
    bins = [pw.fn.SUM(pw.Case(None, [((Prediction.confidence >= i / HISTOGRAM_BINS)
                                       & (Prediction.confidence < (i + 1) / HISTOGRAM_BINS)
                                       if i < HISTOGRAM_BINS - 1 else
                                       (Prediction.confidence >= i / HISTOGRAM_BINS), 1)], 0))
            for i in range(HISTOGRAM_BINS)]
    correct = pw.fn.SUM(pw.Case(None, [(Prediction.true_label == Prediction.predicted_class, 1)], 0))
    totals = (Prediction.select(Prediction.model_version, pw.fn.COUNT(Prediction.id), pw.fn.COUNT(Prediction.true_label),
                                correct, *bins)
              .group_by(Prediction.model_version).order_by(Prediction.model_version).tuples())
    for version, count, labelled, right, *histogram in totals:
        mix = [(name, n) for name, n in
               Prediction.select(Prediction.predicted_name, pw.fn.COUNT(Prediction.id))
               .where(Prediction.model_version == version).group_by(Prediction.predicted_name)
               .order_by(Prediction.predicted_name).tuples()]
        agree = pw.fn.SUM(pw.Case(None, [(ShadowPrediction.predicted_class == Prediction.predicted_class, 1)], 0))
        shadow = [{"model_version": v, "scored": n, "agreement": (a or 0) / n if n else None}
                  for v, n, a in
                  ShadowPrediction.select(ShadowPrediction.model_version, pw.fn.COUNT(ShadowPrediction.id), agree)
                  .join(Prediction, on=_same_message(ShadowPrediction))
                  .where(Prediction.model_version == version)
                  .group_by(ShadowPrediction.model_version).tuples()]
        summaries.append(VersionSummary(version, count, labelled, int(right or 0), mix,
                                        [int(b or 0) for b in histogram], shadow))
    return summaries


def confusion(model_version: str) -> dict[tuple[int, int], int]:
    """(true label, predicted class) -> count, over the version's labelled predictions."""
    return {(int(t), int(p)): n for t, p, n in
            Prediction.select(Prediction.true_label, Prediction.predicted_class, pw.fn.COUNT(Prediction.id))
            .where((Prediction.model_version == model_version) & Prediction.true_label.is_null(False))
            .group_by(Prediction.true_label, Prediction.predicted_class).tuples()}


_KIND_END = re.compile(r"[:;'\"\d(\[{<]")


def reason_kind(reason: str) -> str:
    """What a dead letter's reason is about, without the specifics: its words up to the first
    number, quote or colon (``payload of 9 bytes exceeds ...`` -> ``payload of``)."""
    match = _KIND_END.search(reason)
    kind = (reason[:match.start()] if match else reason).strip()
    return kind[:60] or reason[:20]


def dead_letter_kinds(limit: int = 5000) -> list[tuple[str, int]]:
    """Reason kinds with their counts, most frequent first."""
    counts: dict[str, int] = {}
    for reason, n in (DeadLetter.select(DeadLetter.reason, pw.fn.COUNT(DeadLetter.id))
                      .group_by(DeadLetter.reason).limit(limit).tuples()):
        kind = reason_kind(reason)
        counts[kind] = counts.get(kind, 0) + n
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def dead_letter_page(kind: str | None = None, after: int | None = None, limit: int = 30) -> Page:
    """Dead letters, newest first; with ``kind``, only those whose reason starts with it."""
    query = (DeadLetter.select(DeadLetter.id, DeadLetter.source, DeadLetter.message_id, DeadLetter.position,
                               DeadLetter.reason, DeadLetter.attributes, DeadLetter.payload_size,
                               DeadLetter.received_at, pw.fn.SUBSTR(DeadLetter.payload, 1, 64).alias("head"))
             .order_by(DeadLetter.id.desc()).limit(limit + 1))
    if kind:
        query = query.where(DeadLetter.reason.startswith(kind))
    return _keyset_page(query, DeadLetter.id, after, limit)


def dead_letter_payload(row_id: int) -> tuple[bytes, str] | None:
    """The stored payload (its first 64 KiB) and attributes (JSON text) of dead letter ``row_id``."""
    row = (DeadLetter.select(DeadLetter.payload, DeadLetter.attributes)
           .where(DeadLetter.id == row_id).tuples().first())
    return None if row is None else (bytes(row[0]), row[1])


def record_review(source: str, message_id: str, label: int, reviewer: str, classes: int) -> dict:
    """Store that message (source, message_id) is of class ``label``; a later review of the same
    message replaces this one. Raises ReviewError for an unknown message or class."""
    if not 0 <= label < classes:
        raise ReviewError(f"label {label}", f"not a class index (0-{classes - 1})")
    exists = (Prediction.select(Prediction.id)
              .where((Prediction.source == source) & (Prediction.message_id == message_id)).exists())
    if not exists:
        raise ReviewError(f"message {source}/{message_id!r}", "no prediction has this source and id")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    (Review.insert(source=source, message_id=message_id, label=label, reviewed_at=now, reviewer=reviewer)
     .on_conflict(conflict_target=[Review.source, Review.message_id],
                  update={Review.label: label, Review.reviewed_at: now, Review.reviewer: reviewer})
     .execute())
    return {"source": source, "message_id": message_id, "label": label, "reviewer": reviewer,
            "reviewed_at": now.isoformat(timespec="seconds")}
