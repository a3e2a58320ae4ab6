"""The one isolation boundary for per-message work, and the one-line reasons it records."""

from __future__ import annotations

import re
from typing import Callable, TypeVar

from vectorai.transports.base import ReceivedMessage

#: The longest failure reason kept: enough for any message this package words, and a bound on
#: what a third-party exception's text (which may echo the payload) can put in the database.
MAX_REASON = 500
_T = TypeVar("_T")

_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9A-Fa-f]+>")


class InvalidMessage(Exception):
    """Why one message of a batch cannot be decoded; becomes a failure or a MessageDecodeError."""


def failure_reason(err: BaseException) -> str:
    """One line, at most MAX_REASON characters, that says why a message failed.

    Our own reasons are kept as worded, any other exception is named by its type and text; in
    either, object reprs (``<_io.BytesIO object at 0x...>``, which Pillow's errors quote) are cut
    to the type, and NUL characters and lone surrogates escaped, so that the reason can always
    be stored as text."""
    text = str(err) if isinstance(err, InvalidMessage) else f"{type(err).__name__}: {err}".rstrip(": ")
    text = " ".join(_OBJECT_REPR.sub(r"<\1>", text).split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


class Failures(list):
    """The messages of a batch that failed, each with its reason: ``list[(message, reason)]``."""

    def run(self, message: ReceivedMessage, step: Callable[..., _T], *args: object) -> _T | None:
        """``step(*args)`` for one message: its result, or None with the message recorded here.

        The one isolation boundary for per-message work (see ``vectorai.messages``)."""
        try:
            return step(*args)
        except Exception as err:  # noqa: BLE001 - by design: any failure of one message is its own
            self.append((message, failure_reason(err)))
            return None
