"""What the page checks before any view runs: the Host a request names, where a login may send
the browser next, and how often one address may guess the token."""

from __future__ import annotations

import collections
import ipaddress
import threading
import time
import unicodedata
from typing import Iterable
from urllib.parse import urlsplit

#: Names that only ever mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
#: Addresses that mean "every interface": no name for a Host header.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def host_name(header: str) -> str:
    """The name in a Host header, without its port, lower case, without a final dot
    (``[::1]:8090`` -> ``::1``, ``Example.org.:443`` -> ``example.org``)."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        text = name
    return text.rstrip(".")


def allowed_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names the page answers to: the loopback names, the address it listens on (unless
    that is every interface) and the names given with ``--allowed-host``."""
    names = set(LOOPBACK_NAMES) | {host_name(name) for name in extra if name.strip()}
    if host_name(bind_host) not in _WILDCARDS:
        names.add(host_name(bind_host))
    return frozenset(names)


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a request whose Host header is ``header`` is for this server.

    A page whose name an attacker rebinds to this machine's address still sends its own name
    (DNS rebinding), so a name must be one of ``names``. An address literal is accepted: a
    browser sends one only when it was pointed at the address itself, which is no attacker's
    origin. A request without a Host header does not come from a browser."""
    if header is None:
        return True
    name = host_name(header)
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def local_path(target: str) -> str:
    """``target`` when it is a path on this site, else ``/``: a login never sends the browser
    elsewhere. Browsers drop tabs and newlines from a URL (``/\\t/evil.example/`` becomes
    ``//evil.example/``) and read ``\\`` as ``/``, so any of those refuses the target too."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(unicodedata.category(ch)[0] in "CZ" and ch != " " for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


class LoginThrottle:
    """At most ``attempts`` wrong tokens per client address in any ``window_s`` seconds; past
    that the address is refused, right token or not, until its oldest failure is that old.
    Keeps at most ``max_clients`` addresses (the oldest is forgotten first)."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return 0.0
            while failures and now - failures[0] >= self.window_s:
                failures.popleft()
            if len(failures) < self.attempts:
                return 0.0
            return self.window_s - (now - failures[0])

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        with self._lock:
            failures = self._failures.pop(client, None) or collections.deque(maxlen=self.attempts)
            failures.append(time.monotonic())
            self._failures[client] = failures
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
