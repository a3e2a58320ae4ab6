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
from dataclasses import dataclass
from typing import Iterable

import peewee as pw

from vectorai.db import Prediction
from vectorai.review import queries
from vectorai.review.priority import Candidate, review_order

#: Index reads joined in one statement by "review next".
UNION_READS = 200


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
            first, last = (_naive_utc(dt.datetime.fromisoformat(str(stamp))) for stamp in span)
        except (ValueError, OverflowError):
            continue
        found.append(DriftedRun(str(report.get("model_version", "")), first, last))
    return found


def _naive_utc(stamp: dt.datetime) -> dt.datetime:
    """As the tables store times: naive UTC."""
    return stamp.astimezone(dt.timezone.utc).replace(tzinfo=None) if stamp.tzinfo else stamp


def _in_drifted_run(runs: list[DriftedRun]) -> pw.Expression | None:
    if not runs:
        return None
    spans = [(Prediction.model_version == run.model_version) & Prediction.predicted_at.between(run.first, run.last)
             for run in runs]
    return functools.reduce(operator.or_, spans)


def _in_any(runs: list[DriftedRun], model_version: str, predicted_at: dt.datetime) -> bool:
    return any(run.model_version == model_version and run.first <= predicted_at <= run.last for run in runs)


def review_next_page(filters: queries.GridFilter, classes: Iterable[int], runs: list[DriftedRun],
                     page: int = 0, limit: int = 60) -> queries.Page:
    """Page ``page`` of the unreviewed rows (with a margin) matching ``filters``, in
    ``priority.review_order``: a drifted run's rows, the shadow's disagreements (as stored at
    predict time) and the least sure first, taking the classes in turn. ``next_after`` is the
    next page's number.

    The order's first n rows hold at most each class's first n by ``priority_key``, and those are
    among its n smallest margins, the n smallest of its disputed rows, of its drifted rows and of
    its drifted disputed rows: four short index reads per class, ranked here."""
    wanted = (page + 1) * limit
    drifted, disputed = _in_drifted_run(runs), Prediction.shadow_disagrees.is_null(False)
    base = [*queries.conditions(filters), queries.unreviewed(), Prediction.margin.is_null(False)]
    tiers = [None, disputed] + ([drifted, drifted & disputed] if drifted is not None else [])
    # The flags are worked out here from the row's columns: as CASE expressions in each of the
    # reads, rendering the SQL cost more than running it.
    reads = [Prediction.select(Prediction.id, Prediction.predicted_class, Prediction.margin,
                               Prediction.shadow_disagrees, Prediction.model_version, Prediction.predicted_at)
             .where(*base, Prediction.predicted_class == cls, *([tier] if tier is not None else []))
             .order_by(Prediction.margin, Prediction.id).limit(wanted)
             for cls in ([filters.predicted_class] if filters.predicted_class is not None else classes)
             for tier in tiers]
    pool: dict[int, Candidate] = {}
    # UNION ALL, a statement per UNION_READS reads: one round trip for a page of ten classes,
    # and within SQLite's limit of 500 terms in one compound SELECT.
    for start in range(0, len(reads), UNION_READS):
        union = functools.reduce(operator.add, reads[start:start + UNION_READS])
        for row_id, cls, margin, row_disputed, version, predicted_at in union.tuples():
            pool[row_id] = Candidate(margin, cls, row_disputed is not None, _in_any(runs, version, predicted_at))
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
