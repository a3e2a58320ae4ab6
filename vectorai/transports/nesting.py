"""A bound on how deep a message's attributes may nest, wherever they are parsed or written.

Attributes are a flat map of strings. Kafka headers and Pub/Sub attributes cannot be anything
else, but the local queue keeps them as JSON text, which another producer may nest to any depth:
Python's ``json`` recurses once per level, so about 1,000 levels raise ``RecursionError`` while
parsing, and a few hundred, though parsed, raise it again when the dead letter writes them back.
Both happened outside the per-message isolation boundary and stopped the run on the same offset
every time. So no nesting past ``MAX_ATTRIBUTE_DEPTH`` is ever parsed, nor walked when written.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Mapping

#: Arrays and objects within the attributes' own object: more than any producer needs (the
#: decoder refuses any value that is not a string anyway), far below Python's recursion limit.
MAX_ATTRIBUTE_DEPTH = 32

#: The characters that open or close a level, or start, end or escape a string.
_STRUCTURE = re.compile(r'[\[\]{}"\\]')


class TooDeep(ValueError):
    """Attributes that nest past MAX_ATTRIBUTE_DEPTH; its text is the dead letter's reason."""

    def __init__(self) -> None:
        super().__init__(f"attributes nest deeper than {MAX_ATTRIBUTE_DEPTH} levels of JSON arrays and objects")


def nesting_depth_exceeds(text: str, limit: int = MAX_ATTRIBUTE_DEPTH) -> bool:
    """Whether the JSON ``text`` opens more than ``limit`` arrays or objects at once (brackets
    inside strings do not count). Linear, without recursion; the usual text, with few brackets,
    is answered by two counts in C."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string, escaped_at = 0, False, -1
    for match in _STRUCTURE.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_attributes(text: object) -> object:
    """The JSON ``text`` of a message's attributes, parsed. Raises TooDeep past the bound,
    ValueError for text that is not JSON, TypeError for a value that is not text at all."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")  # as json.loads reads bytes
    if isinstance(text, str) and nesting_depth_exceeds(text):
        raise TooDeep()
    return json.loads(text)


def bounded(value: object, leaf: Callable[[object], object] = lambda value: value, depth: int = 0) -> object:
    """``value`` with every array or object (a mapping, list or tuple) nested past
    MAX_ATTRIBUTE_DEPTH replaced by a string that says so, each mapping a dict with text keys,
    and each other value turned by ``leaf`` into what the caller writes. Recurses at most
    MAX_ATTRIBUTE_DEPTH times, whatever ``value`` holds (a cycle included)."""
    if isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_ATTRIBUTE_DEPTH:
            return f"<nested deeper than {MAX_ATTRIBUTE_DEPTH} levels>"
        if isinstance(value, Mapping):
            return {str(name): bounded(item, leaf, depth + 1) for name, item in value.items()}
        return [bounded(item, leaf, depth + 1) for item in value]
    return leaf(value)


def _too_deep(value: object, depth: int = 0) -> bool:
    if not isinstance(value, (Mapping, list, tuple)):
        return False
    if depth >= MAX_ATTRIBUTE_DEPTH:
        return True
    return any(_too_deep(item, depth + 1) for item in (value.values() if isinstance(value, Mapping) else value))


def dump_attributes(attributes: Mapping[str, object]) -> str:
    """``attributes`` as JSON text for the local queue. Raises TooDeep past the bound (the
    producer's own mistake: attributes are strings), TypeError for a value JSON cannot hold."""
    if _too_deep(attributes):
        raise TooDeep()
    return json.dumps(dict(attributes))
