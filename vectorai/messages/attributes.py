"""The checks on a message's attributes: its id, its label and its producer timestamp."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Mapping

from vectorai.messages.failures import InvalidMessage

#: The longest id a message may have: the ``message_id`` columns' width. A longer one is a
#: failure, never truncated (two ids sharing 255 characters would be merged into one row).
MAX_ID = 255


def check_attributes(attrs: Mapping[str, object]) -> None:
    """Every attribute is a string, and the id can be stored as it is."""
    for name, value in attrs.items():
        if type(value) is not str:  # a local queue's JSON null or number: never str()'d into "None"
            raise InvalidMessage(f"attribute {str(name)[:64]!r} is {json_type(value)}, not a string")
    problem = id_problem(attrs.get("id"))
    if problem is not None:
        raise InvalidMessage(problem)


def id_problem(key: object) -> str | None:
    """Why ``key`` cannot be stored as a row's id as it is, or None when it can. The one rule for
    prediction rows and dead letters alike."""
    if not key:
        return "missing 'id' attribute"
    if not isinstance(key, str):
        return f"'id' is {json_type(key)}, not a string"
    if len(key) > MAX_ID:
        return (f"'id' of {len(key)} characters is longer than {MAX_ID}; it is never truncated, "
                f"which could merge it with another message's id")
    if "\x00" in key:
        return "'id' contains a NUL character, which no database text column can store"
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: a Kafka key that was not UTF-8, or broken text from a producer.
            return f"'id' {key.encode('utf-8', 'backslashreplace').decode()[:80]!r} is not valid UTF-8 text"
    return None


def json_type(value: object) -> str:
    """How a JSON reader would name ``value``'s type: null, a number, an array..."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def parse_label(value: str | None, num_classes: int | None) -> int | None:
    """The ``label`` attribute as a class index of the model, or None when there is none."""
    if value is None or value == "":
        return None
    try:
        label = int(value)
    except ValueError:
        shown = repr(value) if len(value) <= 64 else f"{value[:64]!r}... ({len(value)} characters)"
        raise InvalidMessage(f"label {shown} is not an integer class index") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise InvalidMessage(f"label {label} is outside the model's {num_classes} classes")
    return label


def parse_timestamp(value: str | None) -> dt.datetime | None:
    """The ``produced-at`` attribute in UTC, or None when there is none."""
    if not value:
        return None
    if len(value) > 64:
        raise InvalidMessage(f"produced-at {value[:64]!r}... is not an ISO 8601 timestamp")
    try:
        return _timestamp(value)
    except ValueError:
        raise InvalidMessage(f"produced-at {value!r} is not an ISO 8601 timestamp") from None
    except OverflowError:
        raise InvalidMessage(f"produced-at {value!r} is out of range in UTC") from None


@functools.lru_cache(maxsize=1024)
def _timestamp(value: str) -> dt.datetime:
    """The timestamp in UTC. Converted here, inside the isolation boundary: a valid stamp can
    still overflow on the way to UTC (0001-01-01T00:00:00+01:00).

    Cached: a producer usually stamps many messages alike (StreamData stamps a whole run), and
    parsing cost as much per message as the rest of the attributes together. (Only strings of
    at most 64 characters reach the cache.)"""
    stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return stamp.astimezone(dt.timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)
