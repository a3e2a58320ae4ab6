"""Leases on the messages a subscriber handed out and has not yet acknowledged or released.

A background thread extends their ack deadline before it runs out, so a batch that takes longer
than the subscription's deadline is not redelivered while it is still being processed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

# One logger for the whole package, named as the module was before it became one.
log = logging.getLogger(__package__)

#: A lease is extended once this fraction of the ack deadline has passed since it was pulled or
#: last extended: the remaining third (at least 3 s at the 10 s minimum) covers a slow call.
LEASE_RENEW_AT = 2 / 3
#: After a failed extension, how soon the keeper tries again (the deadline may not have run out).
LEASE_RETRY_S = 1.0


class LeaseKeeper:
    """Keeps the ack ids handed out and not yet acknowledged or released, and extends their ack
    deadline from a daemon thread once ``LEASE_RENEW_AT`` of it has passed, so the consuming loop
    never has to. A failed extension is logged, never raised: the worst it causes is a redelivery,
    which the database deduplicates."""

    def __init__(self, extend: Callable[[list[str], int], None], deadline_s: int, max_lease_s: float,
                 where: str, thread_name: str) -> None:
        self._extend = extend
        self._where = where  # "<subscription path> at <endpoint>", for log messages
        self._deadline_s = deadline_s
        self._renew_after_s = deadline_s * LEASE_RENEW_AT
        self._max_lease_s = max_lease_s
        # ack id -> (leased since, extend at), both time.monotonic(). Guarded by _lock, which is
        # only ever held for dictionary work, never across a call to Pub/Sub.
        self._leased: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        # Held by the thread while an extension is on the wire, and by release() so that its
        # zero deadline always lands after any extension of the same ids.
        self._extending = threading.Lock()
        self._stopped = threading.Event()
        self._failing = False  # only the keeper's thread touches it
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def add(self, ack_ids: list[str]) -> None:
        """Start extending ``ack_ids``, just pulled."""
        now = time.monotonic()
        lease = (now, now + self._renew_after_s)  # one tuple shared by the whole batch
        with self._lock:
            self._leased.update(dict.fromkeys(ack_ids, lease))

    def discard(self, ack_ids: Iterable[str], wait_for_extension: bool = False) -> None:
        """Stop extending ``ack_ids``; with ``wait_for_extension``, also return only once no
        extension that includes them is still on the wire."""
        with self._lock:
            pop = self._leased.pop
            for ack_id in ack_ids:
                pop(ack_id, None)
        if wait_for_extension:
            # An extension that started before the discard holds this lock until it is answered;
            # one that starts after it re-reads the leases under this lock and skips these ids.
            with self._extending:
                pass

    def stop(self) -> None:
        """Stop the thread; leases still held lapse at their deadline."""
        self._stopped.set()
        # An extension in flight ends within the client's timeout; do not hang close() on it.
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                wait_s = self._extend_due()
            except Exception:  # noqa: BLE001 - the keeper must outlive any one bad round
                log.exception("Pub/Sub lease keeper for %s failed; leases may lapse and messages be "
                              "redelivered", self._where)
                wait_s = LEASE_RETRY_S
            self._stopped.wait(wait_s)

    def _extend_due(self) -> float:
        """Extend every lease that is due; return how long to sleep until the next one is."""
        now = time.monotonic()
        due, next_at = self._take_due(now)
        if not due:
            return max(next_at - now, 0.0)
        with self._extending:
            with self._lock:  # released or acknowledged while we scanned: leave them alone
                due = [ack_id for ack_id in due if ack_id in self._leased]
            renew_at = self._send_extension(due)
        with self._lock:
            leased = self._leased
            for ack_id in due:
                lease = leased.get(ack_id)
                if lease is not None:
                    leased[ack_id] = (lease[0], renew_at)
        return max(min(next_at, renew_at) - time.monotonic(), 0.0)

    def _take_due(self, now: float) -> tuple[list[str], float]:
        """The ack ids due for extension at ``now``, and when the next lease not due will be;
        leases held past ``max_lease_s`` are dropped here, with a warning."""
        due: list[str] = []
        expired: list[str] = []
        # Anything added after this scan is due no sooner than a full renew interval from now.
        next_at = now + self._renew_after_s
        with self._lock:
            for ack_id, (since, at) in self._leased.items():
                if at > now:
                    next_at = min(next_at, at)
                elif now - since >= self._max_lease_s:
                    expired.append(ack_id)
                else:
                    due.append(ack_id)
            for ack_id in expired:
                del self._leased[ack_id]
        if expired:
            # The cap exists for the caller that forgot a message: extended forever, it would
            # never reach another consumer while this process lives. An hour is far beyond any
            # batch (Google's own streaming client uses the same default).
            log.warning("stopped extending %d Pub/Sub messages from %s leased for over %.0fs without "
                        "being acknowledged or released; they will be redelivered", len(expired),
                        self._where, self._max_lease_s)
        return due, next_at

    def _send_extension(self, due: list[str]) -> float:
        """Extend ``due`` by the deadline; return when they are next due (sooner after a failure)."""
        # Timed from before the call: Pub/Sub starts the new deadline when it receives it.
        sent = time.monotonic()
        try:
            self._extend(due, self._deadline_s)
        except Exception as err:  # noqa: BLE001 - logged; a lapsed lease is only a redelivery
            # Once per outage, not once per retry: the loop reports an unreachable service.
            log.log(logging.DEBUG if self._failing else logging.WARNING,
                    "could not extend the ack deadline of %d Pub/Sub messages from %s (retrying "
                    "every %.0fs): %s", len(due), self._where, LEASE_RETRY_S, err)
            self._failing = True
            return time.monotonic() + LEASE_RETRY_S
        if self._failing:
            log.info("extending Pub/Sub ack deadlines on %s works again", self._where)
            self._failing = False
        return sent + self._renew_after_s
