"""Dead-letter rows: a message that could not be classified, stored with the reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from vectorai import db as results_db
from vectorai.messages import id_problem
from vectorai.transports.base import ReceivedMessage
from vectorai.transports.nesting import bounded

#: The dead-letter table's ``attributes`` holds at most this many characters, always valid JSON.
DEAD_LETTER_ATTRIBUTES_CAP = 4096
_ATTRIBUTE_VALUE_CAP = 512


def canonical_json(value: object) -> str:
    """``value`` as canonical JSON: keys sorted (so a Pub/Sub attribute map, whose order differs
    between processes, gives one text and one fingerprint), ASCII (lone surrogates escaped), and
    always valid: NaN and infinities become the strings "nan", "inf", anything else not JSON
    its repr, and arrays or objects nested past ``MAX_ATTRIBUTE_DEPTH`` a string saying so (a
    dead letter is built outside the isolation boundary, so this must never raise)."""
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)


def _jsonable(value: object) -> object:
    return bounded(value, _json_leaf)


def _json_leaf(value: object) -> object:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return repr(value)


def _payload_bytes(payload: object) -> bytes:
    """The payload as bytes for a dead letter, whatever a transport handed over (the local
    queue's payload column may hold TEXT, a number or NULL in a hand-made queue)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")


def dead_letter(message: ReceivedMessage, reason: str, now: dt.datetime) -> dict[str, object]:
    """The dead-letter row of ``message``, which failed for ``reason``."""
    attributes = canonical_json(message.attributes)
    payload = _payload_bytes(message.payload)
    key = message.attributes.get("id")
    return {
        "source": message.source,
        # Kept only when it can be stored as it is; the raw id is in ``attributes`` either way.
        "message_id": key if id_problem(key) is None else None,
        "position": message.position[:255],
        # What the message was, not only where: a position can come again with other content
        # (a recreated Kafka topic, a new local queue file), and that poison must be stored too,
        # while a redelivery of the same message must not be.
        "fingerprint": hashlib.sha256(b"%d:%s:%s" % (len(attributes), attributes.encode(), payload)).hexdigest(),
        "reason": reason,
        "attributes": _capped_json(message.attributes, attributes),
        "payload": payload[: results_db.DEAD_LETTER_PAYLOAD_CAP],
        "payload_size": len(payload),
        "received_at": now,
    }


def _capped_json(attributes: object, full: str) -> str:
    """The attributes as JSON of at most DEAD_LETTER_ATTRIBUTES_CAP characters: as they came
    when they fit, else each value cut to a bounded length and, past the cap, the remaining
    names dropped, with ``"...": "N attributes, M characters"`` saying what was cut."""
    if len(full) <= DEAD_LETTER_ATTRIBUTES_CAP:
        return full
    items = list(_jsonable(dict(attributes)).items())  # as they came: the fingerprint is of all of them
    kept: dict[str, object] = {}
    note = json.dumps({"...": f"{len(items)} attributes, {len(full)} characters in all"})
    budget = DEAD_LETTER_ATTRIBUTES_CAP - len(note)
    for name, value in items:
        entry = {str(name)[:64]: value[:_ATTRIBUTE_VALUE_CAP] if isinstance(value, str) else value}
        size = len(json.dumps(entry))
        if size > budget:
            break
        kept.update(entry)
        budget -= size
    kept["..."] = f"{len(items)} attributes, {len(full)} characters in all"
    return json.dumps(kept)
