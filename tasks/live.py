"""A running task's state in the scheduler (luigid's task list and visualiser), through Luigi's
own ``set_status_message``, ``set_progress_percentage`` and ``set_tracking_url``."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import luigi

if TYPE_CHECKING:
    from vectorai.predict import RunReport

log = logging.getLogger("luigi-interface")


@dataclass
class _Update:
    message: str | None = None
    percentage: int | None = None
    tracking_url: str | None = None

    def __bool__(self) -> bool:
        return not (self.message is None and self.percentage is None and self.tracking_url is None)


class LiveStatus:
    """Sends a task's status to the scheduler from a background thread.

    With luigid each call is an HTTP request, which Luigi retries for minutes when luigid has
    gone away: made on the task's own thread, it would hold up the work it reports on. Here
    ``update`` only records the latest state and returns; the thread sends it, at most once per
    ``min_interval_s`` (later updates in between replace earlier ones), and ``close`` sends the
    last one. A failure to send is logged once and never fails the task. Outside a worker (the
    task's methods are unset) nothing is sent.

    Use as a context manager around the work: ``with LiveStatus(self) as live: ...``.
    """

    def __init__(self, task: luigi.Task, min_interval_s: float = 1.0, close_timeout_s: float = 10.0) -> None:
        self._task = task
        self._min_interval_s = min_interval_s
        self._close_timeout_s = close_timeout_s
        self._lock = threading.Lock()
        self._pending = _Update()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._send_loop, name=f"status-{task.task_family}", daemon=True)
        self._thread.start()

    def update(self, message: str | None = None, percentage: float | None = None,
               tracking_url: str | None = None) -> None:
        """Record the latest status (None: unchanged); it reaches the scheduler shortly."""
        with self._lock:
            if message is not None:
                self._pending.message = message
            if percentage is not None:
                # luigid's visualiser draws an integer bar; keep 0-100 whatever the caller computed.
                self._pending.percentage = max(0, min(100, int(percentage)))
            if tracking_url is not None:
                self._pending.tracking_url = tracking_url
        self._wake.set()

    def close(self) -> None:
        """Send what is pending and stop the thread (waiting at most ``close_timeout_s``: an
        unreachable luigid must not keep a finished task from finishing)."""
        self._closing.set()
        self._wake.set()
        self._thread.join(self._close_timeout_s)

    def __enter__(self) -> LiveStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                update, self._pending = self._pending, _Update()
                closing = self._closing.is_set()
            if update:
                self._send(update)
            if closing:
                return
            # At most one update per interval; closing cuts the wait short.
            self._closing.wait(self._min_interval_s)

    def _send(self, update: _Update) -> None:
        task = self._task
        try:
            if update.tracking_url is not None and task.set_tracking_url is not None:
                task.set_tracking_url(update.tracking_url)
            if update.message is not None and task.set_status_message is not None:
                task.set_status_message(update.message)
            if update.percentage is not None and task.set_progress_percentage is not None:
                task.set_progress_percentage(update.percentage)
        except Exception as err:  # noqa: BLE001 - the work goes on without a live status
            if not self._warned:
                self._warned = True
                from tasks.common import scrub

                log.warning("%s: could not update its status in the scheduler (%s: %s); the task goes on",
                            task.task_id, type(err).__name__, scrub(str(err)))


def count(value: int | float) -> str:
    """``12,345`` for status lines."""
    return f"{value:,.0f}"


def predict_status(report: RunReport, max_messages: int | None = None) -> tuple[str, float | None]:
    """PredictTask's status line per source and its percentage: of ``max_messages`` when set,
    else none, since a stream has no end known in advance (see README, "While it runs")."""
    seconds = report.seconds
    lines = []
    for name, counts in sorted(report.by_source.items()):
        rate = counts.consumed / seconds if seconds > 0 else 0.0
        lines.append(f"{name}: consumed {count(counts.consumed)}, predicted {count(counts.predicted)}, "
                     f"dead letters {count(counts.dead_letters)}, {count(rate)} images/s")
    if report.drift is not None:
        lines.append(drift_line(report.drift))
    percentage = 100.0 * report.consumed / max_messages if max_messages else None
    return "\n".join(lines) or "waiting for messages", percentage


def drift_line(drift: dict) -> str:
    """The drift test's figures in one line: flag, score, p-value, estimated (and measured) accuracy."""
    if drift.get("p_value") is None:
        flag = ("no drift test (no reference)" if "reference" not in drift
                else "drift not tested (too few images so far)")
    else:
        flag = (f"{'DRIFT' if drift['drifted'] else 'no drift'}: score {drift['score']:.2f}, "
                f"p {drift['p_value']:.2g} ({drift['drifted_windows']} of {drift['tested_windows']} windows drifted)")
    line = f"{flag}; estimated accuracy {_percent(drift.get('estimated_accuracy'))}"
    if drift.get("measured_accuracy") is not None:
        line += f", measured {_percent(drift['measured_accuracy'])}"
    return line + (" (unreliable under drift)" if drift.get("drifted") else "")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
