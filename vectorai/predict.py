"""The stream-to-database loop: consume -> decode -> preprocess -> infer -> insert -> acknowledge.

Per batch: one onnxruntime call, one database transaction, then one acknowledgement. A message
that cannot be decoded goes to the dead-letter table in the same transaction and is
acknowledged with its batch, so it neither blocks the run nor comes back forever.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import peewee as pw

from vectorai import db as results_db
from vectorai.errors import ImageError, MessageDecodeError
from vectorai.inference import OnnxClassifier
from vectorai.messages import DecodedMessage, DecodeLimits, decode_message
from vectorai.preprocess import preprocess_images
from vectorai.transports.base import ReceivedMessage, Transport

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """What one PredictTask run did; written as its JSON target."""

    consumed: int = 0
    predicted: int = 0
    already_predicted: int = 0
    dead_letters: int = 0
    batches: int = 0
    per_class: Counter = field(default_factory=Counter)
    per_source: Counter = field(default_factory=Counter)
    labelled: int = 0
    correct: int = 0
    seconds: float = 0.0
    model_version: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "consumed": self.consumed,
            "predicted": self.predicted,
            "already_predicted": self.already_predicted,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "per_class": dict(sorted(self.per_class.items())),
            "per_source": dict(sorted(self.per_source.items())),
            "labelled": self.labelled,
            "accuracy": (self.correct / self.labelled) if self.labelled else None,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.consumed / self.seconds, 1) if self.seconds > 0 else None,
            "model_version": self.model_version,
        }


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _dead_letter(message: ReceivedMessage, reason: str, now: dt.datetime) -> dict[str, object]:
    return {
        "source": message.source,
        "message_id": (message.key or None) and str(message.key)[:255].replace("\x00", "\ufffd"),
        "position": message.position[:255],
        "reason": reason,
        "attributes": json.dumps(dict(message.attributes))[:4096],
        "payload": bytes(message.payload[: results_db.DEAD_LETTER_PAYLOAD_CAP]),
        "payload_size": len(message.payload),
        "received_at": now,
    }


@dataclass
class DecodedBatch:
    """One consumed batch, decoded and preprocessed: what the model runs on, and what it skips."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    decoded: list[DecodedMessage]
    pixels: np.ndarray
    dead: list[dict[str, object]]
    received_at: dt.datetime


@dataclass
class ClassifiedBatch:
    """One batch after inference, ready to be written."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    rows: list[dict[str, object]]
    dead: list[dict[str, object]]


def decode_batch(
    source: Transport, messages: Sequence[ReceivedMessage], classifier: OnnxClassifier,
    limits: DecodeLimits = DecodeLimits(),
) -> DecodedBatch:
    """Decode and preprocess a batch into one array; poison goes to ``dead`` with the reason."""
    now = results_db.utc_now()
    decoded: list[DecodedMessage] = []
    dead: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    num_classes = len(classifier.class_names)
    for message in messages:
        try:
            item = decode_message(message, num_classes, limits)
        except MessageDecodeError as err:
            dead.append(_dead_letter(message, err.reason, now))
            continue
        if (message.source, item.key) in seen:
            continue  # the same id twice in one batch (re-sent sample): one row is enough
        seen.add((message.source, item.key))
        decoded.append(item)

    pixels = np.empty((0,), dtype=np.float32)
    if decoded:
        try:
            pixels = preprocess_images([d.image for d in decoded], classifier.spec)
        except ImageError:
            # Some image in the batch is bad: find it one by one, keep the rest.
            good, images = [], []
            for item in decoded:
                try:
                    images.append(preprocess_images([item.image], classifier.spec)[0])
                    good.append(item)
                except ImageError as err:
                    dead.append(_dead_letter(item.message, str(err), now))
            decoded = good
            pixels = np.stack(images) if images else pixels
    return DecodedBatch(source, messages, decoded, pixels, dead, now)


def label_batch(batch: DecodedBatch, probabilities: np.ndarray, classifier: OnnxClassifier) -> ClassifiedBatch:
    """Turn the model's output for a decoded batch into prediction rows."""
    rows: list[dict[str, object]] = []
    if batch.decoded:
        classes = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(classes)), classes]
        names = classifier.class_names
        version = classifier.info.version
        produced: dict[dt.datetime | None, dt.datetime | None] = {}  # messages share stamps
        for item, cls, confidence in zip(batch.decoded, classes.tolist(), confidences.tolist()):
            message = item.message
            if item.produced_at not in produced:
                produced[item.produced_at] = _naive_utc(item.produced_at)
            rows.append({
                "source": message.source,
                "message_id": item.key[:255],
                "position": message.position[:255],
                "image": message.payload,
                "content_type": message.attributes.get("content-type", ""),
                "predicted_class": cls,
                "predicted_name": names[cls],
                "confidence": confidence,
                "true_label": item.label,
                "model_version": version,
                "produced_at": produced[item.produced_at],
                "predicted_at": batch.received_at,
            })
    return ClassifiedBatch(batch.source, batch.messages, rows, batch.dead)


def _record(report: RunReport, batch: ClassifiedBatch, new: int) -> None:
    report.batches += 1
    report.predicted += new
    report.already_predicted += len(batch.rows) - new
    report.dead_letters += len(batch.dead)
    for row in batch.rows:
        report.per_class[row["predicted_name"]] += 1
        report.per_source[row["source"]] += 1
        if row["true_label"] is not None:
            report.labelled += 1
            report.correct += int(row["true_label"] == row["predicted_class"])


class _InferenceThread:
    """onnxruntime calls on one background thread, in submission order.

    ``session.run`` releases the GIL, so while the model classifies batch N this thread's caller
    writes batch N-1, acknowledges it and consumes and decodes batch N+1: the model is never idle
    waiting for Python, and Python never waits for the model unless it is the slower of the two.
    (The classifier leaves one core to the caller for this; see ``inference.default_threads``.)
    """

    def __init__(self, classifier: OnnxClassifier) -> None:
        self._classifier = classifier
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")

    def submit(self, batch: DecodedBatch) -> Future:
        if not batch.decoded:
            done: Future = Future()
            done.set_result(None)
            return done
        return self._pool.submit(self._classifier.predict_proba, batch.pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_predictions(
    sources: Sequence[Transport],
    classifier: OnnxClassifier,
    database: pw.Database,
    *,
    batch_size: int,
    timeout_ms: int,
    limits: DecodeLimits = DecodeLimits(),
    max_messages: int | None = None,
) -> RunReport:
    """Drain every source until each has had nothing new for ``timeout_ms``.

    Per batch: one onnxruntime call, one database transaction, then one acknowledgement of that
    source, always in that order; a batch is acknowledged only after its rows are committed. The
    model runs on a background thread one batch ahead of the database (at most two batches are in
    memory). If anything fails, every batch not yet acknowledged is released for redelivery and
    the error propagates.
    """
    report = RunReport(model_version=classifier.info.version)
    started = last_progress = time.perf_counter()
    active = list(sources)
    in_flight: deque[tuple[DecodedBatch, Future]] = deque()
    inference = _InferenceThread(classifier)

    def complete_oldest() -> None:
        nonlocal last_progress
        decoded, future = in_flight[0]
        batch = label_batch(decoded, future.result(), classifier)
        _record(report, batch, results_db.write_results(database, batch.rows, batch.dead))
        batch.source.acknowledge(batch.messages)
        in_flight.popleft()
        last_progress = time.perf_counter()
        log.info("batch of %d from %s committed (%d so far)", len(batch.messages), batch.source.name,
                 report.consumed)

    try:
        turn = 0
        while active or in_flight:
            want = batch_size if max_messages is None else min(batch_size, max_messages - report.consumed)
            messages: Sequence[ReceivedMessage] = []
            if active and want > 0:
                source = active[turn % len(active)]
                turn += 1
                # With batches in flight, only take what has already arrived: waiting for new
                # messages must never hold back the commit of those already classified.
                messages = source.consume_batch(want, 0 if in_flight else timeout_ms)
                if messages:
                    report.consumed += len(messages)
                    decoded = decode_batch(source, messages, classifier, limits)
                    in_flight.append((decoded, inference.submit(decoded)))
                elif not in_flight:
                    active.remove(source)  # nothing new for timeout_ms: drained
            elif active:
                active.clear()  # max_messages reached
            # Keep one batch in the model while the previous one is written; with nothing new,
            # finish everything before waiting.
            if len(in_flight) > 1 or (in_flight and not messages):
                complete_oldest()
    except BaseException:
        for decoded, _ in reversed(in_flight):
            try:
                decoded.source.release(decoded.messages)
            except Exception as err:  # noqa: BLE001 - the first error is the one to report
                # Unreleased messages still come back, only later (a Pub/Sub ack deadline).
                log.warning("could not release %d messages from %s: %s", len(decoded.messages),
                            decoded.source.name, err)
        raise
    finally:
        inference.close()
    # Throughput excludes the final wait that proved each source was drained.
    report.seconds = last_progress - started
    return report
