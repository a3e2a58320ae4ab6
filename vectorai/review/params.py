"""The page's query and form parameters, each checked for form and range before a query sees
it: a value no column can hold is a clear 400, never a database's overflow (a 500)."""

from __future__ import annotations

import datetime as dt
import math

from flask import request

from vectorai.errors import ReviewError
from vectorai.review import queries
from vectorai.review.settings import PAGE_SIZES

#: Row ids are 64-bit (SQLite's INTEGER, PostgreSQL's bigserial); SQLite's driver overflows past this.
MAX_ROW_ID = 2**63 - 1
#: Class indices and labels are 32-bit integer columns.
MAX_CLASS = 2**31 - 1
#: No id, source, version or reason kind is longer: a longer value cannot match anything.
MAX_TEXT = 1000


def parse_int(text: str, name: str, low: int = 0, high: int = MAX_ROW_ID) -> int:
    """``text`` as a whole number in [low, high], or a ReviewError naming ``name``."""
    try:
        value = int(text)
    except ValueError:
        raise ReviewError(f"{name} {text[:40]!r}", "is not a whole number") from None
    if not low <= value <= high:
        raise ReviewError(f"{name} {text[:40]!r}", f"is out of range ({low} to {high})")
    return value


def int_arg(name: str, high: int = MAX_ROW_ID, low: int = 0) -> int | None:
    text = request.args.get(name, "")
    return parse_int(text, f"filter {name}", low, high) if text else None


def text_value(text: str | None, name: str) -> str | None:
    """A text parameter as a query may take it (PostgreSQL refuses NUL in text)."""
    if not text:
        return None
    if "\x00" in text or len(text) > MAX_TEXT:
        raise ReviewError(f"{name} {text[:40]!r}", f"holds a NUL character or is longer than {MAX_TEXT}")
    return text


def time_arg(name: str) -> dt.datetime | None:
    """A time filter, as naive UTC (the tables store UTC)."""
    text = request.args.get(name, "")
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    except ValueError:
        raise ReviewError(f"filter {name} {text[:40]!r}", "is not a time like 2026-12-04T15:30") from None
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise ReviewError(f"filter {name} {text[:40]!r}", "is out of range (years 1 to 9999, in UTC)") from None


def below_arg() -> float | None:
    text = request.args.get("below", "")
    if not text:
        return None
    try:
        below = float(text)
    except ValueError:
        raise ReviewError(f"filter below {text[:40]!r}", "is not a number") from None
    if not math.isfinite(below) or below < 0:
        raise ReviewError(f"filter below {text[:40]!r}", "is out of range (0 to 1)")
    return None if below >= 1.0 else below  # the slider at its top means "any confidence"


#: The grid's orders besides newest first ("").
ORDERS = ("next", "suspicious")


def order_arg() -> str:
    """The grid's order: "" (newest first), "next" (review next) or "suspicious" (suspicious labels)."""
    order = request.args.get("order", "")
    if order and order not in ORDERS:
        raise ReviewError(f"order {order[:40]!r}", f"is not one of {', '.join(ORDERS)}")
    return order


def grid_request() -> tuple[queries.GridFilter, int | None, int]:
    """The predictions grid's filters, ``after`` and page size."""
    args = request.args
    filters = queries.GridFilter(
        predicted_class=int_arg("cls", MAX_CLASS), true_label=int_arg("true", MAX_CLASS), below=below_arg(),
        wrong=args.get("wrong") == "1", shadow_disagrees=args.get("shadow") == "1",
        unreviewed=args.get("unreviewed") == "1", source=text_value(args.get("source"), "filter source"),
        model_version=text_value(args.get("version"), "filter version"), since=time_arg("since"),
        until=time_arg("until"))
    limit = int_arg("limit", high=max(PAGE_SIZES), low=1) or 60
    return filters, int_arg("after"), limit
