"""The loop itself: consume, decode, hand to the model, write, acknowledge; and on a failure,
release whatever is in flight."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import peewee as pw

from vectorai import db as results_db
from vectorai.batching import DEFAULT_MAX_BATCH_BYTES, BudgetedSource
from vectorai.drift import DEFAULT_THRESHOLD
from vectorai.inference import OnnxClassifier
from vectorai.messages import DecodeLimits
from vectorai.predict.concurrency import DecodePool, Decoding, Inference, Job, worth_a_pool
from vectorai.predict.drift import DriftMonitor
from vectorai.predict.memory import YOUNG_OBJECTS_PER_MESSAGE, CollectEveryBudget, fewer_young_collections
from vectorai.predict.report import RunReport
from vectorai.predict.shadow import ShadowScorer
from vectorai.predict.stages import DecodedBatch, batch_context, decode_batch, decode_spec, label_batch
from vectorai.transports.base import ReceivedMessage, Transport

log = logging.getLogger("vectorai.predict")  # as stages' lines: one name for the loop's log


@dataclass
class _InFlight:
    """A consumed batch not yet acknowledged: being decoded by the pool, then in the model."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    decoding: Decoding | None = None
    decoded: DecodedBatch | None = None
    job: Job | None = None


class PredictionLoop:
    """One run of ``run_predictions``: its settings, the batches in flight, and the report.

    Each step is a method: ``_consume`` a batch from the next source, ``_to_model`` once it is
    decoded, ``_complete_oldest`` (label, write, acknowledge), and after a failure
    ``_release_unacknowledged``. ``run`` drives them until every source is drained."""

    def __init__(self, sources: Sequence[Transport], classifier: OnnxClassifier, database: pw.Database, *,
                 batch_size: int, timeout_ms: int, limits: DecodeLimits = DecodeLimits(),
                 max_messages: int | None = None, progress: Callable[[RunReport], None] | None = None,
                 progress_interval_s: float = 1.0, shadow: OnnxClassifier | None = None,
                 decode_threads: int | None = None, jpeg_draft: bool = True,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, shadow_unavailable: str = "",
                 drift_window: int = 1000, drift_threshold: float = DEFAULT_THRESHOLD) -> None:
        self.report = RunReport(model_version=classifier.info.version,
                                shadow_model_version=shadow.info.version if shadow is not None else "",
                                shadow_unavailable=shadow_unavailable)
        self._classifier, self._database, self._shadow = classifier, database, shadow
        self._batch_size, self._timeout_ms, self._max_messages = batch_size, timeout_ms, max_messages
        self._limits, self._jpeg_draft = limits, jpeg_draft
        self._progress, self._progress_interval_s = progress, progress_interval_s
        self._sources = [BudgetedSource(source, max_batch_bytes) for source in sources]
        self._active = list(self._sources)
        self._turn = 0
        self._collector = CollectEveryBudget(max_batch_bytes)
        self._in_flight: deque[_InFlight] = deque()
        #: A batch consumed but not yet in flight: released too if starting it fails.
        self._unqueued: tuple[Transport, Sequence[ReceivedMessage]] | None = None
        self._scorer = ShadowScorer(classifier, shadow, self.report) if shadow is not None else None
        self._inference = Inference(classifier)
        self._decoders = DecodePool(decode_threads, getattr(classifier, "threads", None),
                                    len(classifier.class_names), limits, decode_spec(classifier, shadow), jpeg_draft)
        self._drift = DriftMonitor(getattr(classifier, "reference", None), len(classifier.class_names),
                                   window=drift_window, threshold=drift_threshold)
        self._started = self._last_progress = self._next_report = 0.0

    def run(self) -> RunReport:
        """Drain every source (once per loop); the report. See ``run_predictions``."""
        self._started = self._last_progress = time.perf_counter()
        self._next_report = self._started + self._progress_interval_s
        with fewer_young_collections(YOUNG_OBJECTS_PER_MESSAGE * self._batch_size):
            try:
                while self._active or self._in_flight:
                    consumed = self._consume()
                    self._submit_decoded()
                    # Keep one batch in the model while the previous one is written (and, with the
                    # pool, one more decoding); with nothing new, finish everything before waiting.
                    in_flight = self._in_flight
                    ahead = 2 if in_flight and in_flight[-1].decoding is not None else 1
                    if len(in_flight) > ahead or (in_flight and not consumed):
                        self._complete_oldest()
                for source in self._sources:  # max_messages reached with messages delivered beyond it
                    _release(source.transport, source.take_carried())
            except BaseException:
                self._release_unacknowledged()
                raise
            finally:
                self._decoders.close()
                self._inference.close()
        self.report.drift = self._drift.finish()
        # Throughput excludes the final wait that proved each source was drained.
        self.report.seconds = self._last_progress - self._started
        return self.report

    def _consume(self) -> bool:
        """Take a batch from the next active source into flight; False when none came. A source
        with nothing new for ``timeout_ms`` is drained; all are once ``max_messages`` is reached."""
        if not self._active:
            return False
        want = (self._batch_size if self._max_messages is None
                else min(self._batch_size, self._max_messages - self.report.consumed))
        if want <= 0:
            self._active.clear()
            return False
        source = self._active[self._turn % len(self._active)]
        self._turn += 1
        # With batches in flight, only take what has already arrived: waiting for new messages
        # must never hold back the commit of those already classified.
        messages = source.next_batch(want, 0 if self._in_flight else self._timeout_ms)
        if messages:
            self._start(source, messages)
            return True
        if not self._in_flight:
            self._active.remove(source)
        return False

    def _start(self, source: BudgetedSource, messages: Sequence[ReceivedMessage]) -> None:
        """Count a consumed batch and start it: a batch of photos to the decoding pool, any other
        decoded here and handed to the model."""
        self._collector.consumed(messages)
        self.report.source(source.name).consumed += len(messages)
        transport = source.transport
        self._unqueued = (transport, messages)
        entry = _InFlight(transport, messages)
        with batch_context(transport, messages):
            if worth_a_pool(messages):
                entry.decoding = self._decoders.decode(messages)
                self.report.decode_threads = self._decoders.lanes
            else:
                entry.decoded = decode_batch(transport, messages, self._classifier, self._limits,
                                             jpeg_draft=self._jpeg_draft, shadow=self._shadow)
                entry.job = self._inference.submit(entry.decoded)
        self._in_flight.append(entry)
        self._unqueued = None

    def _to_model(self, entry: _InFlight) -> None:
        """Hand a batch the pool decodes to the model, finishing its decoding first."""
        if entry.job is not None:
            return
        if not entry.decoding.done() and self.report.batches and self._decoders.widen():
            # Decoding holds the model back (not counting the first batch's start).
            self.report.decode_threads = self._decoders.lanes
        with batch_context(entry.source, entry.messages):
            entry.decoded = decode_batch(entry.source, entry.messages, self._classifier, self._limits,
                                         images=entry.decoding.result(), shadow=self._shadow)
            entry.decoding = None
            entry.job = self._inference.submit(entry.decoded)

    def _submit_decoded(self) -> None:
        """Batches the pool has decoded go to the model, in the order they were consumed."""
        for entry in self._in_flight:
            if entry.job is None:
                if not entry.decoding.done():
                    return
                self._to_model(entry)

    def _complete_oldest(self) -> None:
        """Label the oldest batch in flight (helping the model finish it), score it with the
        shadow, write it in one transaction, then acknowledge it."""
        in_flight = self._in_flight
        self._to_model(in_flight[0])
        self._submit_decoded()
        decoded, job = in_flight[0].decoded, in_flight[0].job
        following = in_flight[1].job if len(in_flight) > 1 else None
        with batch_context(decoded.source, decoded.messages):
            probabilities = job.result(spare=following)
            batch = label_batch(decoded, probabilities, self._classifier)
            if self._scorer is not None:
                self._scorer.score(decoded, batch)
            written = results_db.write_batch(self._database, batch.rows, batch.dead, batch.shadow_rows)
            self.report.record_batch(batch.source.name, batch.rows, len(batch.dead), batch.duplicates, written.new,
                                     more_dead=batch.more_dead)
            if self._scorer is not None:
                self._scorer.written(batch, written.shadow_rejected)
            batch.source.acknowledge(batch.messages)
        if self._drift.add(probabilities if batch.model_rows is None else probabilities[batch.model_rows], batch.rows):
            self.report.drift = self._drift.summary()
        in_flight.popleft()
        self._last_progress = now = time.perf_counter()
        if self._progress is not None and now >= self._next_report:
            self.report.seconds = now - self._started
            self._progress(self.report)
            self._next_report = now + self._progress_interval_s
        log.info("batch of %d from %s committed (%d so far)", len(batch.messages), batch.source.name,
                 self.report.consumed)

    def _release_unacknowledged(self) -> None:
        """After a failure: stop decoding, and give back every batch not acknowledged, newest first."""
        for entry in self._in_flight:
            if entry.decoding is not None:
                entry.decoding.cancel()
        batches = [(entry.source, entry.messages) for entry in reversed(self._in_flight)]
        carried = [(source.transport, source.take_carried()) for source in self._sources if source.carried]
        for transport, messages in carried + ([self._unqueued] if self._unqueued else []) + batches:
            _release(transport, messages)


def _release(source: Transport, messages: Sequence[ReceivedMessage]) -> None:
    """Give messages back for redelivery, best effort: the error that stopped the run (if any)
    is the one to report, and unreleased messages still come back, only later (a Pub/Sub ack
    deadline)."""
    if not messages:
        return
    try:
        source.release(messages)
    except Exception as err:  # noqa: BLE001 - see above
        log.warning("could not release %d messages from %s: %s", len(messages), source.name, err)


def run_predictions(
    sources: Sequence[Transport],
    classifier: OnnxClassifier,
    database: pw.Database,
    *,
    batch_size: int,
    timeout_ms: int,
    limits: DecodeLimits = DecodeLimits(),
    max_messages: int | None = None,
    progress: Callable[[RunReport], None] | None = None,
    progress_interval_s: float = 1.0,
    shadow: OnnxClassifier | None = None,
    decode_threads: int | None = None,
    jpeg_draft: bool = True,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    shadow_unavailable: str = "",
    drift_window: int = 1000, drift_threshold: float = DEFAULT_THRESHOLD,
) -> RunReport:
    """Drain every source until each has had nothing new for ``timeout_ms``.

    Per batch: onnxruntime calls, one database transaction, then one acknowledgement of that
    source, always in that order; a batch is acknowledged only after its rows are committed. The
    model runs on a background thread one batch ahead of the database (at most two batches are
    in memory, three with the decoding pool; see ``concurrency.Inference``). If anything fails,
    every batch not yet acknowledged is released for redelivery and the error propagates. An
    image the model gives NaN or an infinity for is a dead letter (``stages.label_batch``).

    ``progress``, when given, is called with the report so far (``seconds`` up to the last
    commit) after a committed batch, at most once per ``progress_interval_s``: the clock is
    read after each commit anyway, so watching a run costs nothing per message. It runs on the
    loop's thread, so it must return quickly; an exception from it fails the run.

    ``shadow``, when given, also classifies every batch (on the loop's thread, after the primary
    model): its rows go to ``shadow_prediction`` in the same transaction, and the report gives
    the agreement between the two and the shadow's accuracy. Without it nothing here changes.
    Shadow scoring is best effort (``predict.shadow``): a batch it fails on (or gives a
    non-finite output for some images of: they get no shadow row), or whose shadow rows
    the database refuses (written in a savepoint of their own), is stored with the primary's
    rows and counted in ``shadow_errors``. ``shadow_unavailable``: why the shadow model asked for
    could not be loaded (``load_shadow``), for the report.

    A batch of large messages (photos: ``POOL_MIN_PAYLOAD_BYTES``) is decoded and preprocessed
    by a pool of ``decode_threads`` threads while the model classifies the batch before it; then
    at most three batches are in memory (one decoding, one in the model, one being written),
    else two. By default the pool starts on the cores onnxruntime does not use (at least one)
    and doubles each time the model would wait for decoding, up to one per core (``DecodePool``).
    ``jpeg_draft``: decode a JPEG at 1/2, 1/4 or 1/8 of its size when the model takes at most
    that (``preprocess.fit_uint8``).

    A batch holds at most ``batch_size`` messages and ``max_batch_bytes`` of payload, except
    that one message larger than that is a batch of its own (``vectorai.batching``).

    The outputs of stored rows are tested against the model's reference per ``drift_window``
    images: the report's ``drift``, flagged below the p-value ``drift_threshold`` (``predict.drift``).
    """
    return PredictionLoop(sources, classifier, database, batch_size=batch_size, timeout_ms=timeout_ms,
                          limits=limits, max_messages=max_messages, progress=progress,
                          progress_interval_s=progress_interval_s, shadow=shadow, decode_threads=decode_threads,
                          jpeg_draft=jpeg_draft, max_batch_bytes=max_batch_bytes, shadow_unavailable=shadow_unavailable,
                          drift_window=drift_window, drift_threshold=drift_threshold).run()
