"""The grid's two ranked orders: "review next" (what a correction is worth most on) and
"suspicious labels" (labelled rows whose label the model finds unlikely).

Both page by offset (a ranked order has no keyset to page by) and read only the start of an
index: "review next" each class's least sure rows (``predicted_class, margin``), "suspicious
labels" the least likely labels (``label_probability``).
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar

import peewee as pw

from vectorai.db import Prediction
from vectorai.review import queries
from vectorai.review.priority import Candidate, review_order

T = TypeVar("T")


@dataclass(frozen=True)
class DriftedRun:
    """The rows one drifted PredictTask run stored: its model's, predicted in its time span."""

    model_version: str
    first: dt.datetime
    last: dt.datetime


def drifted_runs(reports: Iterable[dict]) -> list[DriftedRun]:
    """The runs whose report says ``"drift": {"drifted": true, ...}``; a report without drift, or
    without the span of its rows (``predicted_between``), counts as not drifted."""
    found = []
    for report in reports:
        drift, span = report.get("drift"), report.get("predicted_between")
        if not (isinstance(drift, dict) and drift.get("drifted") is True and isinstance(span, list) and len(span) == 2):
            continue
        try:
            first, last = (dt.datetime.fromisoformat(str(stamp)) for stamp in span)
        except ValueError:
            continue
        found.append(DriftedRun(str(report.get("model_version", "")), first, last))
    return found


def _in_drifted_run(runs: list[DriftedRun]) -> pw.Expression | None:
    if not runs:
        return None
    spans = [(Prediction.model_version == run.model_version) & Prediction.predicted_at.between(run.first, run.last)
             for run in runs]
    return functools.reduce(operator.or_, spans)


def _flag(condition: pw.Expression | None) -> pw.Node:
    return pw.Value(0) if condition is None else pw.Case(None, [(condition, 1)], 0)


def review_next_page(filters: queries.GridFilter, classes: Iterable[int], runs: list[DriftedRun],
                     page: int = 0, limit: int = 60) -> queries.Page:
    """Page ``page`` of the unreviewed rows (with a margin) matching ``filters``, in
    ``priority.review_order``: a drifted run's rows, the shadow's disagreements and the least sure
    first, taking the classes in turn. ``next_after`` is the next page's number.

    The order's first n rows hold at most each class's first n by ``priority_key``, and those are
    among its n smallest margins, the n smallest of its disputed rows, of its drifted rows and of
    its drifted disputed rows: four short index reads per class, ranked here."""
    wanted = (page + 1) * limit
    drifted, disputed = _in_drifted_run(runs), queries.shadow_disagrees()
    base = [*queries.conditions(filters), queries.unreviewed(), Prediction.margin.is_null(False)]
    tiers = [None, disputed] + ([drifted, drifted & disputed] if drifted is not None else [])
    pool: dict[int, Candidate] = {}
    for cls in [filters.predicted_class] if filters.predicted_class is not None else classes:
        for tier in tiers:
            query = (Prediction.select(Prediction.id, Prediction.margin, _flag(disputed).alias("disputed"),
                                       _flag(drifted).alias("drifted"))
                     .where(*base, Prediction.predicted_class == cls, *([tier] if tier is not None else []))
                     .order_by(Prediction.margin, Prediction.id).limit(wanted))
            for row_id, margin, row_disputed, row_drifted in query.tuples():
                pool[row_id] = Candidate(margin, cls, bool(row_disputed), bool(row_drifted))
    ids = sorted(pool)  # ties in the order go to the lower id
    order = [ids[i] for i in review_order([pool[row_id] for row_id in ids])]
    return _page_of(order, page, limit)


def _page_of(order: list[int], page: int, limit: int) -> queries.Page:
    chosen = order[page * limit:(page + 1) * limit]
    rows = {row["id"]: row for row in queries.card_rows().where(Prediction.id.in_(chosen)).dicts()} if chosen else {}
    return queries.Page([rows[i] for i in chosen if i in rows], page + 1 if len(order) > (page + 1) * limit else None)


def label_thresholds() -> dict[int, float]:
    """Per given label: the mean probability the model gives labelled rows for their own label
    (their self-confidence). A row below its label's mean is a candidate label issue, as
    cleanlab's ``find_label_issues`` thresholds per class."""
    return {int(label): float(mean) for label, mean in
            Prediction.select(Prediction.true_label, pw.fn.AVG(Prediction.label_probability))
            .where(Prediction.label_probability.is_null(False))
            .group_by(Prediction.true_label).tuples()}


def suspicious_page(filters: queries.GridFilter, thresholds: dict[int, float], page: int = 0,
                    limit: int = 60) -> queries.Page:
    """Page ``page`` of the unreviewed labelled rows below their label's threshold, the least
    likely label first (cleanlab's ``self_confidence`` ranking). ``next_after``: the next page's number."""
    if not thresholds:
        return queries.Page([], None)
    below = pw.Case(Prediction.true_label, [(label, mean) for label, mean in sorted(thresholds.items())], 0.0)
    query = (queries.card_rows()
             .where(*queries.conditions(filters), queries.unreviewed(), Prediction.label_probability.is_null(False),
                    Prediction.label_probability < below)
             .order_by(Prediction.label_probability, Prediction.id).offset(page * limit).limit(limit + 1))
    rows = list(query.dicts())
    return queries.Page(rows[:limit], page + 1 if len(rows) > limit else None)


class Cached(Generic[T]):
    """A value read at most once per ``ttl_s`` (the thresholds are an average over every labelled
    row, which a page must not pay for on each request)."""

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
