"""Keeping secrets out of what is printed: URLs with their passwords masked, error text scrubbed.

Every URL a user configures (the results database, the MLflow store) may carry a password, in
any form Peewee and MLflow accept: ``scheme://user:pw@host/db``, an empty user
(``scheme://:pw@host/db``), an ``@`` or ``:`` inside the password, or ``?password=pw`` in the
query. These functions work on any string and never raise, because they run while an error is
already being reported.
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote, unquote, urlsplit

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: Query or keyword parameters whose value is a secret (psycopg2's ``password`` and
#: ``sslpassword``, MySQL's ``passwd``, tokens and keys of HTTP stores).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"(?<=[?&;])([^=&;#?]*)=([^&;#]*)")
#: ``password=...`` as libpq's keyword DSNs and some drivers' messages write it.
_KEYWORD_PARAM = re.compile(r"\b([A-Za-z_]*(?:pass|pwd|secret|token)[A-Za-z_]*)(\s*=\s*)"
                            r"('[^']*'|\"[^\"]*\"|[^\s,;&)]+)", re.IGNORECASE)
#: A URL inside free text: up to the next white space or quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, safe for logs, errors and reports.

    The user information runs up to the *last* ``@`` after ``scheme://``, as URL parsers read
    it, so a password holding ``@``, ``:`` or even ``/`` is hidden whole. A URL whose path or
    query also holds an ``@`` therefore shows less than it could (the host is hidden too),
    never more. Query parameters naming a secret (``password``, ``sslpassword``, ``passwd``,
    ``token``...) keep their name and lose their value.
    """
    try:
        text = str(url)
        scheme = _SCHEME.match(text)
        if scheme is None:
            return _mask_query(text)
        head, rest = text[:scheme.end()], text[scheme.end():]
        userinfo, at, tail = rest.rpartition("@")
        if not at:
            return head + _mask_query(rest)
        user, colon, _password = userinfo.partition(":")
        return f"{head}{user}{colon and ':' + MASK}@{_mask_query(tail)}"
    except Exception:  # noqa: BLE001 - reporting an error must not raise another
        return MASK


def url_secrets(url: str) -> list[str]:
    """The passwords in ``url``, as written, percent-decoded and percent-encoded: what a
    library's error text might echo, for :func:`mask_text`."""
    found: set[str] = set()
    try:
        text = str(url)
        scheme = _SCHEME.match(text)
        rest = text[scheme.end():] if scheme else text
        userinfo, at, tail = rest.rpartition("@")
        if at and ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        try:
            # What a standard parser reads as the password, when the URL is ambiguous.
            parsed = urlsplit(text)
            if parsed.password:
                found.add(parsed.password)
        except ValueError:
            pass
        for match in _QUERY_PARAM.finditer(tail if at else rest):
            if _SECRET_KEY.search(unquote(match.group(1))):
                found.add(match.group(2))
    except Exception:  # noqa: BLE001
        pass
    # Each as written, decoded and encoded: a message may show any of them.
    found |= {unquote(secret) for secret in found}
    found |= {quote(secret, safe="") for secret in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log line) with each of ``secrets`` replaced by ``***``,
    every URL in it masked and ``password=...`` values hidden."""
    try:
        result = str(text)
        for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
            result = result.replace(secret, MASK)
        result = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), result)
        return _KEYWORD_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", result)
    except Exception:  # noqa: BLE001
        return MASK


def mask_error(text: str, url: str) -> str:
    """An error's text with the secrets of ``url`` (the URL it was about) hidden: drivers and
    URL parsers sometimes echo the URL, or the password alone."""
    return mask_text(text, url_secrets(url))


def _mask_query(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        key = match.group(1)
        return f"{key}={MASK}" if _SECRET_KEY.search(unquote(key)) else match.group(0)

    return _QUERY_PARAM.sub(hide, text)


class SecretText(str):
    """A secret (a password) that prints as ``***`` in every printed form, ``repr``, ``str`` and
    format, so a client library that logs its configuration (kafka-python's admin client does,
    at DEBUG) logs the mask. Its characters are untouched: ``encode`` and ``join``, which
    is how clients build what they send, use the real value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)


def holds_secret(value: str) -> bool:
    """Whether ``value`` carries something :func:`mask_text` would hide: a URL's password, a
    secret query parameter (``?password=``, ``?token=``) or a ``password=...`` keyword."""
    text = str(value)
    # The whole value as one URL too: in free text a URL ends at white space, on argv it does not.
    return mask_url(text) != text or mask_text(text) != text


def command_line_refusal(option: str, where: str) -> str:
    """The one line refusing a secret given as ``option`` on a command line, saying ``where``
    it belongs instead. It never quotes the value: the password would be printed with it."""
    return (f"{option} must not contain a password (a command line is visible to every user of the "
            f"machine in ps and stays in shell history); {where}")
