"""Text from a message made safe for a terminal or a log: control characters escaped.

A message id, an attribute or a class name comes from whoever produced the message. Printed
raw, ``\\x1b]0;...\\x07`` retitles the terminal, ``\\x1b[2J`` clears it, ``\\r`` or ``\\n`` forges
a log line and a bidi override reorders what a reader sees. ``printable`` escapes each of them
as Python writes it in a string literal (``\\x1b``, ``\\u202e``); every other character is kept,
so an ordinary id reads as it was sent.
"""

from __future__ import annotations

import logging
import numbers
import re

__all__ = ["printable", "PrintableLogRecord", "escape_log_records"]

#: C0 controls, DEL, C1 controls, and the Unicode bidi marks, embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control character escaped (``\\n`` too, unless ``keep_newlines``, for a
    traceback whose lines are ours)."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(_escape, text)


class _Shown:
    """An argument of a log call that is not a number, shown escaped when the message is
    formatted (``%s`` and ``%r`` alike: a string's repr escapes once, not twice)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return printable(str(self.value))

    def __repr__(self) -> str:
        return printable(repr(self.value))


def _shown(arg: object) -> object:
    if arg is None or isinstance(arg, numbers.Number):
        return arg  # %d, %.3f and friends need the number itself; a number has no control character
    return _Shown(arg)


class PrintableLogRecord(logging.LogRecord):
    """A log record whose arguments are escaped when its message is made: the message's template
    is the program's own, the values put into it may come from a message. ``args`` itself is
    left as it was logged, for handlers that read it (the Kafka transport keeps the exception a
    failed bootstrap connection logged)."""

    def getMessage(self) -> str:
        message = str(self.msg)
        if isinstance(self.args, tuple) and self.args:
            return message % tuple(_shown(arg) for arg in self.args)
        if isinstance(self.args, dict) and self.args:
            return message % {key: _shown(value) for key, value in self.args.items()}
        return message


def escape_log_records() -> None:
    """Make every log record of this process a ``PrintableLogRecord`` (once; a factory some
    other library installed is left as it is)."""
    if logging.getLogRecordFactory() is logging.LogRecord:
        logging.setLogRecordFactory(PrintableLogRecord)
