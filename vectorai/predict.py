"""The stream-to-database loop: consume -> decode -> preprocess -> infer -> insert -> acknowledge.

Per batch: onnxruntime calls of ``CHUNK`` images, one database transaction, then one
acknowledgement. A message that cannot be decoded goes to the dead-letter table in the same
transaction and is acknowledged with its batch, so it neither blocks the run nor comes back
forever. Every per-message step runs inside ``messages.Failures.run``, so no message can fail
the run; only what concerns a whole batch (the database, the model, the transport) does, and
its error names the batch's source and positions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import peewee as pw

from vectorai import db as results_db
from vectorai.batching import DEFAULT_MAX_BATCH_BYTES, BudgetedSource, payload_size
from vectorai.errors import BatchError, VectoraiError
from vectorai.inference import OnnxClassifier, available_cores
from vectorai.messages import (DecodedImages, DecodeLimits, Failures, decode_messages, id_problem,
                               stored_content_type)
from vectorai.preprocess import preprocess_images, stack_if_uniform
from vectorai.transports.base import ReceivedMessage, Transport

log = logging.getLogger(__name__)

#: While the loop runs, the cyclic garbage collector's youngest generation is collected only
#: after this many container objects per message of a batch have been allocated and not freed.
#: Each message in flight holds about ten (a Kafka record, its headers, its attributes, ...), and
#: a few batches are in flight at once; with Python's default of 700 the collector ran every 70
#: or so messages, moving them all into older generations and walking them again there: 6-10 µs
#: of the loop's CPU per raw Kafka image, under 1 with this (``gc.callbacks``, 30,000 images).
YOUNG_OBJECTS_PER_MESSAGE = 100


class _CollectEveryBudget:
    """Run a full garbage collection each time ``budget`` bytes of payload have been consumed.

    Counting objects is no measure of memory when messages are large: kafka-python leaves each
    fetch response in a reference cycle (a caught timeout's traceback holds the frame that holds
    the fetch futures), 16 MiB of records apiece, and a batch of two 8 MiB images allocates too
    few objects to trigger the collector. Measured on 64 x 8 MiB images through Kafka: 7-12 such
    responses alive at once (110-190 MiB) before this. A full collection costs about 40 ms here,
    once per ``max_batch_bytes`` (64 MiB: a thousand photos, sixty thousand digits)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._since = 0

    def consumed(self, messages: Sequence[ReceivedMessage]) -> None:
        self._since += sum(payload_size(message) for message in messages)
        if self._since >= self.budget:
            self._since = 0
            gc.collect()


@dataclass
class SourceCounts:
    """One source's share of a run: ``consumed = predicted + already_predicted + duplicates +
    dead_letters`` once its batches are committed."""

    consumed: int = 0
    predicted: int = 0
    already_predicted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    #: Rows with a label, those the model got right, and the shadow model's figures (if any).
    labelled: int = 0
    correct: int = 0
    shadow_scored: int = 0
    shadow_agreed: int = 0
    shadow_correct: int = 0
    #: Batches the shadow model failed on (best effort: their primary rows are stored anyway).
    shadow_errors: int = 0

    def to_dict(self) -> dict[str, object]:
        """The counts, then the ratios there is something to divide by."""
        out: dict[str, object] = {"consumed": self.consumed, "predicted": self.predicted,
                                  "already_predicted": self.already_predicted, "duplicates": self.duplicates,
                                  "dead_letters": self.dead_letters}
        if self.labelled:
            out["accuracy"] = self.correct / self.labelled
        if self.shadow_scored:
            out["shadow_agreement"] = self.shadow_agreed / self.shadow_scored
            if self.labelled:
                out["shadow_accuracy"] = self.shadow_correct / self.labelled
        if self.shadow_errors:
            out["shadow_errors"] = self.shadow_errors
        return out


@dataclass
class RunReport:
    """What one PredictTask run did; written as its JSON target."""

    consumed: int = 0
    predicted: int = 0
    already_predicted: int = 0
    #: Messages whose id came again later in the same batch: one row is stored for the id.
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    per_class: Counter = field(default_factory=Counter)
    per_source: Counter = field(default_factory=Counter)
    labelled: int = 0
    correct: int = 0
    seconds: float = 0.0
    model_version: str = ""
    #: The counts per source name, added to once per batch (never per message).
    by_source: dict[str, SourceCounts] = field(default_factory=dict)
    #: Shadow scoring (a second model on every batch): its version, how many rows both scored,
    #: on how many they agreed (same class name), and its own correct ones among the labelled.
    shadow_model_version: str = ""
    shadow_scored: int = 0
    shadow_agreed: int = 0
    shadow_correct: int = 0
    #: Batches the shadow model failed on; their primary rows were stored and acknowledged.
    shadow_errors: int = 0
    #: Threads that decoded batches of photos by the end of the run (0: none was decoded so).
    decode_threads: int = 0

    def source(self, name: str) -> SourceCounts:
        """The counts of source ``name``, created at zero."""
        counts = self.by_source.get(name)
        if counts is None:
            counts = self.by_source[name] = SourceCounts()
        return counts

    def to_dict(self) -> dict[str, object]:
        return {
            "consumed": self.consumed,
            "predicted": self.predicted,
            "already_predicted": self.already_predicted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "per_class": dict(sorted(self.per_class.items())),
            "per_source": dict(sorted(self.per_source.items())),
            "labelled": self.labelled,
            "accuracy": (self.correct / self.labelled) if self.labelled else None,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.consumed / self.seconds, 1) if self.seconds > 0 else None,
            "model_version": self.model_version,
            "by_source": {name: counts.to_dict() for name, counts in sorted(self.by_source.items())},
            **({"shadow": {
                "model_version": self.shadow_model_version,
                "scored": self.shadow_scored,
                "agreement": (self.shadow_agreed / self.shadow_scored) if self.shadow_scored else None,
                "accuracy": (self.shadow_correct / self.labelled) if self.labelled else None,
                "errors": self.shadow_errors,
            }} if self.shadow_model_version else {}),
        }


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    # Decoding has put every stamp in UTC already (where an overflow is one message's failure).
    return None if value is None else value.replace(tzinfo=None)


#: The dead-letter table's ``attributes`` holds at most this many characters, always valid JSON.
DEAD_LETTER_ATTRIBUTES_CAP = 4096
_ATTRIBUTE_VALUE_CAP = 512


def canonical_json(value: object) -> str:
    """``value`` as canonical JSON: keys sorted (so a Pub/Sub attribute map, whose order differs
    between processes, gives one text and one fingerprint), ASCII (lone surrogates escaped), and
    always valid: NaN and infinities become the strings "nan", "inf", anything else not JSON
    its repr."""
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(name): _jsonable(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return repr(value)


def _payload_bytes(payload: object) -> bytes:
    """The payload as bytes for a dead letter, whatever a transport handed over (the local
    queue's payload column may hold TEXT, a number or NULL in a hand-made queue)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")


def _dead_letter(message: ReceivedMessage, reason: str, now: dt.datetime) -> dict[str, object]:
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


@dataclass
class DecodedBatch:
    """One consumed batch, decoded and preprocessed: what the model runs on, and what it skips.

    ``decoded``, ``labels``, ``produced_at`` and the rows of ``pixels`` are parallel."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    decoded: list[ReceivedMessage]
    labels: list[int | None]
    produced_at: list[dt.datetime | None]
    pixels: np.ndarray
    dead: list[dict[str, object]]
    received_at: dt.datetime
    #: Messages left out because their id came earlier in the same batch.
    duplicates: int = 0
    #: The shadow model's own input for the same rows, when its preprocessing differs (a
    #: foreign model's card); None: it takes ``pixels``.
    shadow_pixels: np.ndarray | None = None


@dataclass
class ClassifiedBatch:
    """One batch after inference, ready to be written."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    rows: list[dict[str, object]]
    dead: list[dict[str, object]]
    duplicates: int = 0
    #: The shadow model's rows for the same messages (``shadow_prediction``), when it runs.
    shadow_rows: list[dict[str, object]] = field(default_factory=list)


def decode_batch(
    source: Transport, messages: Sequence[ReceivedMessage], classifier: OnnxClassifier,
    limits: DecodeLimits = DecodeLimits(), *, jpeg_draft: bool = False, images: DecodedImages | None = None,
    shadow: OnnxClassifier | None = None,
) -> DecodedBatch:
    """Decode and preprocess a batch into one array (and the ``shadow``'s, when it preprocesses
    otherwise); poison goes to ``dead`` with the reason.

    ``images``: the batch already decoded (by the pool, ``_Decoding``); only the rest is done."""
    now = results_db.utc_now()
    own_shadow_input = _own_shadow_input(classifier, shadow)
    if images is None:
        images = decode_messages(messages, len(classifier.class_names), limits, _decode_spec(classifier, shadow),
                                 jpeg_draft=jpeg_draft)
    failures = images.failures
    decoded, labels, stamps, pixels = images.messages, images.labels, images.produced_at, images.images
    duplicates = 0
    keep = _first_of_each_id(decoded)
    if keep is not None:  # the same id twice in one batch (a re-sent sample): one row is enough
        duplicates = len(decoded) - len(keep)
        decoded, labels, stamps = _select(keep, decoded, labels, stamps)
        pixels = pixels[keep] if isinstance(pixels, np.ndarray) else [pixels[i] for i in keep]
    batch = np.empty((0,), dtype=np.float32)
    if decoded:
        try:
            # A card model always preprocesses for itself (transformers' steps from the decoded pixels).
            batch = (classifier.preprocess(pixels) if classifier.decode_spec is None
                     else _model_pixels(pixels, classifier.spec))
        except Exception:  # noqa: BLE001 - some image is bad: find it one by one, keep the rest
            good: list[int] = []
            rows = []
            for i, message in enumerate(decoded):
                row = failures.run(message, _preprocess_one, pixels[i], classifier)
                if row is not None:
                    rows.append(row)
                    good.append(i)
            decoded, labels, stamps = _select(good, decoded, labels, stamps)
            pixels = [pixels[i] for i in good]
            batch = np.stack(rows) if rows else batch
    shadow_batch = _shadow_input(shadow, pixels) if own_shadow_input and decoded else None
    dead = [_dead_letter(message, reason, now) for message, reason in failures]
    return DecodedBatch(source, messages, decoded, labels, stamps, batch, dead, now, duplicates, shadow_batch)


def _own_shadow_input(classifier: OnnxClassifier, shadow: OnnxClassifier | None) -> bool:
    """Whether the shadow needs its own input (another card or size) rather than the primary's batch."""
    return shadow is not None and shadow.preprocessing != classifier.preprocessing


def _decode_spec(classifier: OnnxClassifier, shadow: OnnxClassifier | None):
    """The size decoding may bring images to on the way (our own preprocessing); None when a
    model's card, or a shadow of its own, must see the decoded pixels as they are."""
    return None if _own_shadow_input(classifier, shadow) else classifier.decode_spec


def _model_pixels(pixels: np.ndarray | list[np.ndarray], spec) -> np.ndarray:
    """The batch as one array: uint8 pixels already at the model's shape as they are (the model
    scales them a chunk at a time: a quarter of the memory while the batch waits), else
    preprocessed to float32."""
    if not isinstance(pixels, np.ndarray):
        pixels = stack_if_uniform(pixels)
    if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape[1:3] == (spec.height, spec.width):
        if pixels.ndim == 3 and spec.channels == 1:
            return pixels[:, :, :, None]
        if pixels.ndim == 4 and pixels.shape[3] == spec.channels:
            return pixels
    return preprocess_images(pixels, spec)


def _preprocess_one(image: np.ndarray, classifier: OnnxClassifier) -> np.ndarray:
    return classifier.preprocess([image])[0]


def _shadow_input(shadow: OnnxClassifier, pixels) -> np.ndarray | None:
    """The shadow's own input for images the primary model took; None when one of them does not
    suit the shadow: shadow scoring is best effort and never costs the primary its rows."""
    try:
        return shadow.preprocess(pixels)
    except Exception as err:  # noqa: BLE001 - logged and counted; the batch goes on without shadow rows
        log.warning("the shadow model %s could not preprocess a batch (%s: %s); no shadow rows for it",
                    shadow.info.version, type(err).__name__, " ".join(str(err).split())[:500])
        return None


def _first_of_each_id(messages: Sequence[ReceivedMessage]) -> list[int] | None:
    """Indices of the first message of each (source, id), or None when no id repeats."""
    first: dict[tuple[str, str], int] = {}
    for i, message in enumerate(messages):
        first.setdefault((message.source, message.attributes["id"]), i)
    return None if len(first) == len(messages) else list(first.values())


def _select(indices: list[int], *columns: list) -> list[list]:
    """The given rows of parallel lists."""
    return [[column[i] for i in indices] for column in columns]


def label_batch(batch: DecodedBatch, probabilities: np.ndarray, classifier: OnnxClassifier) -> ClassifiedBatch:
    """Turn the model's output for a decoded batch into prediction rows."""
    rows: list[dict[str, object]] = []
    if batch.decoded:
        classes = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(classes)), classes]
        names = classifier.class_names
        version = classifier.info.version
        produced: dict[dt.datetime | None, dt.datetime | None] = {}  # messages share stamps
        for message, label, stamp, cls, confidence in zip(
                batch.decoded, batch.labels, batch.produced_at, classes.tolist(), confidences.tolist()):
            if stamp not in produced:
                produced[stamp] = _naive_utc(stamp)
            rows.append({
                "source": message.source,
                "message_id": message.attributes["id"],  # checked by messages.id_problem: never cut
                "position": message.position[:255],
                "image": message.payload,
                "content_type": stored_content_type(message.attributes),
                "predicted_class": cls,
                "predicted_name": names[cls],
                "confidence": confidence,
                "true_label": label,
                "model_version": version,
                "produced_at": produced[stamp],
                "predicted_at": batch.received_at,
            })
    return ClassifiedBatch(batch.source, batch.messages, rows, batch.dead, batch.duplicates)


def shadow_rows(batch: ClassifiedBatch, probabilities: np.ndarray, shadow: OnnxClassifier) -> list[dict[str, object]]:
    """The shadow model's rows for the messages ``batch`` has rows for (the same order)."""
    if not batch.rows:
        return []
    classes = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(classes)), classes]
    names, version = shadow.class_names, shadow.info.version
    return [{
        "source": row["source"], "message_id": row["message_id"], "model_version": version,
        "predicted_class": cls, "predicted_name": names[cls], "confidence": confidence,
        "true_label": row["true_label"], "predicted_at": row["predicted_at"],
    } for row, cls, confidence in zip(batch.rows, classes.tolist(), confidences.tolist())]


def _record_shadow(report: RunReport, batch: ClassifiedBatch) -> None:
    # By class name: the two models may list their classes in another order.
    agreed = sum(row["predicted_name"] == shadow["predicted_name"] for row, shadow in zip(batch.rows, batch.shadow_rows))
    correct = sum(shadow["predicted_class"] == shadow["true_label"] for shadow in batch.shadow_rows
                  if shadow["true_label"] is not None)
    for counts in (report, report.source(batch.source.name)):
        counts.shadow_scored += len(batch.shadow_rows)
        counts.shadow_agreed += agreed
        counts.shadow_correct += correct


def _score_shadow(report: RunReport, batch: ClassifiedBatch, pixels: np.ndarray, shadow: OnnxClassifier) -> None:
    """Shadow scoring is best effort: a shadow model that fails (a broken challenger, a runtime
    error) is logged and counted, and the batch goes on with the primary's rows alone; it must
    never cost the rows of the model that is in production."""
    try:
        rows = shadow_rows(batch, shadow.predict_proba(pixels), shadow)
    except Exception as err:  # noqa: BLE001 - whatever the shadow does, the primary's batch is stored
        for counts in (report, report.source(batch.source.name)):
            counts.shadow_errors += 1
        log.warning("shadow model %s failed on a %s; the batch is stored without its rows: %s: %s",
                    shadow.info.version, _describe_batch(batch.source, batch.messages), type(err).__name__,
                    " ".join(str(err).split())[:500])
        return
    batch.shadow_rows = rows
    _record_shadow(report, batch)


def _record(report: RunReport, batch: ClassifiedBatch, new: int) -> None:
    report.batches += 1
    report.predicted += new
    report.already_predicted += len(batch.rows) - new
    report.duplicates += batch.duplicates
    report.dead_letters += len(batch.dead)
    counts = report.source(batch.source.name)
    counts.predicted += new
    counts.already_predicted += len(batch.rows) - new
    counts.duplicates += batch.duplicates
    counts.dead_letters += len(batch.dead)
    # Counter.update counts an iterable in C; a loop of += per row cost a µs per image.
    report.per_class.update(map(itemgetter("predicted_name"), batch.rows))
    report.per_source.update(map(itemgetter("source"), batch.rows))
    labelled = [(row["true_label"], row["predicted_class"]) for row in batch.rows if row["true_label"] is not None]
    correct = sum(truth == predicted for truth, predicted in labelled)
    for totals in (report, counts):
        totals.labelled += len(labelled)
        totals.correct += correct


#: Images per onnxruntime call. A batch is split so that the loop's thread can take part of it
#: when it would otherwise wait (``_Job``). Measured on 2 cores: 32-image chunks ran as fast as
#: 64-image ones, both side by side (12,900-13,900 images/s) and end to end on local+SQLite
#: (7,760-7,830 against 7,810-7,850), and with two chunks in the model at once the smaller one
#: keeps memory flat (peak RSS 87-89 MiB for 1 batch and 94 for 10, against 95 and 105-108).
CHUNK = 32
#: At most this many bytes of float input per onnxruntime call: fewer than ``CHUNK`` images when
#: they are large. The model's intermediate tensors grow with its input, and two chunks run at
#: once: for a MobileNetV2-sized model at 224x224 a process peaked at 475 MiB classifying chunks
#: of 32 photos and 217 MiB with chunks of 8, at the same CPU per image (10.5-11.6 ms on a busy
#: machine for 4 to 32 per call). 28x28 digits still go 32 at a time.
CHUNK_INPUT_BYTES = 8 * 224 * 224 * 3 * 4


def chunk_images(pixels: np.ndarray) -> int:
    """Images per onnxruntime call for a batch of these pixels."""
    per_image = 4 * int(np.prod(pixels.shape[1:])) if pixels.ndim > 1 else 4
    return max(1, min(CHUNK, CHUNK_INPUT_BYTES // max(per_image, 1)))


class _Job:
    """One batch's inference, split into chunks of ``CHUNK`` images that either thread may claim.

    The background thread claims chunks from the front, the loop's thread from the back while it
    waits for the result; each chunk's probabilities land in their own rows of one array.
    """

    def __init__(self, classifier: OnnxClassifier, pixels: np.ndarray) -> None:
        self._classifier = classifier
        self._pixels = pixels
        self._out = np.empty((len(pixels), len(classifier.class_names)), dtype=np.float32)
        self._chunk = chunk_images(pixels)
        count = -(-len(pixels) // self._chunk)
        self._front, self._back = 0, count  # the unclaimed chunks are [front, back)
        self._unfinished = count
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        if not count:
            self._finished.set()

    def run_chunk(self, from_back: bool) -> bool:
        """Classify one unclaimed chunk; False once none is left."""
        with self._lock:
            if self._front >= self._back:
                return False
            if from_back:
                self._back -= 1
                index = self._back
            else:
                index = self._front
                self._front += 1
        rows = slice(index * self._chunk, (index + 1) * self._chunk)
        try:
            self._out[rows] = self._classifier.predict_proba(self._pixels[rows])
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits for the result
            with self._lock:
                self._error = self._error or err
                self._front = self._back  # nothing more to claim: the batch has failed
            self._finished.set()
            return False
        with self._lock:
            self._unfinished -= 1
            if not self._unfinished:
                self._finished.set()
        return True

    def result(self, spare: _Job | None = None) -> np.ndarray:
        """The batch's probabilities. The caller classifies the chunks still unclaimed instead
        of idling; while the background thread finishes its last one, chunks of ``spare`` (the
        next batch's job) from the back. It waits only when neither has a chunk left: waiting
        for that last chunk had cost the loop 6-10 µs per image (time.thread_time against wall
        time around this call, local+SQLite), a core idle each time."""
        while self.run_chunk(from_back=True):
            pass
        while spare is not None and not self._finished.is_set() and spare.run_chunk(from_back=True):
            pass
        self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._out


class _Inference:
    """onnxruntime calls on one background thread, batch after batch in submission order.

    ``session.run`` releases the GIL, so while the model classifies batch N, the loop's thread
    writes batch N-1, acknowledges it and consumes and decodes batch N+1: the model is never idle
    waiting for Python. When the loop is the faster of the two it does not idle either: waiting
    for batch N, it classifies the chunks of N the background thread has not reached, then
    those of N+1 until the background thread is done with N (``_Job.result``).
    So the model gets every core while the loop has nothing else to do, and every core but the
    loop's while it has (see ``inference.default_threads``).

    Decoding stays on the loop's thread: decoding chunks on the background thread as well made
    the two threads queue for the GIL, and local+SQLite fell from 6,900-7,900 to 5,700-6,000
    images/s.
    """

    def __init__(self, classifier: OnnxClassifier) -> None:
        self._classifier = classifier
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")

    def submit(self, batch: DecodedBatch) -> _Job:
        job = _Job(self._classifier, batch.pixels)  # no pixels when nothing decoded: no chunks
        if batch.decoded:
            self._pool.submit(self._work, job)
        return job

    @staticmethod
    def _work(job: _Job) -> None:
        while job.run_chunk(from_back=False):
            pass

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


#: A batch is decoded by the pool (``_Decoding``) when its messages average at least this many
#: bytes. A smaller message is mostly Python work (attributes, a small inflate) that holds the
#: GIL, and a second thread decoding it only queues for the GIL (see ``_Inference``); a photo is
#: Pillow's and numpy's C code, which releases it, so pool threads decode side by side with the
#: model. (A 28x28 PNG is under 1 KiB; a 640x480 JPEG tens of KiB.)
POOL_MIN_PAYLOAD_BYTES = 4096
#: Messages per task of the decoding pool: small enough that its threads share a batch evenly.
DECODE_SLICE = 16


def give_large_buffers_back() -> None:
    """Make glibc give each buffer of 1 MiB or more (a payload, a decoded photo) pages of its own,
    returned to the system when freed, and keep to two malloc arenas. By default glibc raises its
    mmap threshold after the first such buffer is freed (up to 32 MiB) and keeps freed buffers in
    each thread's arena, so the decoding threads' peaks add up: on 64 images of 8 MiB through
    Kafka, PredictTask peaked at 565-743 MiB without this and 521-549 MiB with it. Process-wide,
    so the task calls it, once; elsewhere than glibc it does nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8  # glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 20)
    mallopt(m_arena_max, 2)


def default_decode_threads(inference_threads: int) -> int:
    """Threads that decode and preprocess: the cores onnxruntime does not use, at least one."""
    return max(1, available_cores() - inference_threads)


def _worth_a_pool(messages: Sequence[ReceivedMessage]) -> bool:
    total = sum(len(message.payload) for message in messages if isinstance(message.payload, (bytes, bytearray)))
    return total >= POOL_MIN_PAYLOAD_BYTES * len(messages)


class _Decoding:
    """One batch being decoded in slices of ``DECODE_SLICE`` messages, which ``lanes`` pool
    threads and, when it needs the batch, the loop's thread claim one at a time.

    Each slice is ``messages.decode_messages``, so every message is still decoded inside the one
    isolation boundary (``Failures.run``); the slices are put back together in message order."""

    def __init__(self, pool: ThreadPoolExecutor, messages: Sequence[ReceivedMessage], num_classes: int,
                 limits: DecodeLimits, spec, jpeg_draft: bool, lanes: int = 1) -> None:
        self._arguments = (num_classes, limits, spec)
        self._jpeg_draft = jpeg_draft
        self._slices = [messages[i:i + DECODE_SLICE] for i in range(0, len(messages), DECODE_SLICE)]
        self._parts: list[DecodedImages | None] = [None] * len(self._slices)
        self._next = 0
        self._unfinished = len(self._slices)
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        if not self._slices:
            self._finished.set()
        for _ in range(min(lanes, len(self._slices))):
            pool.submit(self._work)

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= len(self._slices):
                return None
            self._next += 1
            return self._next - 1

    def _work(self) -> None:
        while (index := self._claim()) is not None:
            try:
                self._parts[index] = decode_messages(self._slices[index], *self._arguments,
                                                     jpeg_draft=self._jpeg_draft)
            except BaseException as err:  # noqa: BLE001 - handed to whoever waits for the batch
                with self._lock:
                    self._error = self._error or err
                    self._next = len(self._slices)
                self._finished.set()
                return
            with self._lock:
                self._unfinished -= 1
                if not self._unfinished:
                    self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self) -> DecodedImages:
        """The batch decoded; the caller decodes the slices no pool thread has claimed yet
        instead of waiting for them."""
        self._work()
        self._finished.wait()
        if self._error is not None:
            raise self._error
        return _joined(self._parts)

    def cancel(self) -> None:
        """Claim nothing more (a run that failed): the slices being decoded finish."""
        with self._lock:
            self._next = len(self._slices)


def _joined(parts: list[DecodedImages]) -> DecodedImages:
    """Decoded slices of a batch as one, in message order: one array when they all are arrays
    of one shape and type, else a list of images."""
    if len(parts) == 1:
        return parts[0]
    failures = Failures()
    messages: list[ReceivedMessage] = []
    labels: list[int | None] = []
    stamps: list[dt.datetime | None] = []
    for part in parts:
        messages += part.messages
        labels += part.labels
        stamps += part.produced_at
        failures += part.failures
    images = [part.images for part in parts if part.messages]
    if images and all(isinstance(i, np.ndarray) for i in images) and len(
            {(i.shape[1:], i.dtype) for i in images}) == 1:
        joined: np.ndarray | list[np.ndarray] = np.concatenate(images)
    else:
        joined = [image for part in images for image in part]
    return DecodedImages(messages, joined, labels, stamps, failures)


@dataclass
class _InFlight:
    """A consumed batch not yet acknowledged: being decoded by the pool, then in the model."""

    source: Transport
    messages: Sequence[ReceivedMessage]
    decoding: _Decoding | None = None
    decoded: DecodedBatch | None = None
    job: _Job | None = None


@contextlib.contextmanager
def _batch_context(source: Transport, messages: Sequence[ReceivedMessage]) -> Iterator[None]:
    """Name the batch (source, positions) in an error that concerns all of it. Our own errors
    keep their type and their one line, the batch added at its end; anything else becomes a
    BatchError, so that Luigi still shows one line."""
    try:
        yield
    except VectoraiError as err:
        err.args = (f"{err} (in the {_describe_batch(source, messages)}, released for redelivery)",)
        raise
    except Exception as err:  # noqa: BLE001 - wrapped, not swallowed
        raise BatchError(_describe_batch(source, messages), f"{type(err).__name__}: {err}") from err


def _describe_batch(source: Transport, messages: Sequence[ReceivedMessage]) -> str:
    where = messages[0].position if len(messages) == 1 else f"{messages[0].position} .. {messages[-1].position}"
    return f"batch of {len(messages)} from {source.name} ({where})"


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


@contextlib.contextmanager
def _fewer_young_collections(threshold: int) -> Iterator[None]:
    """Raise the garbage collector's youngest-generation threshold to at least ``threshold``
    for the duration, then put it back (unless someone else changed it meanwhile).

    Nothing is left uncollected: reference counting frees the loop's objects as before, and any
    cyclic garbage is still collected, only in fewer, larger rounds."""
    young, *older = gc.get_threshold()
    if young == 0 or young >= threshold:  # 0: automatic collection is off; leave it so
        yield
        return
    gc.set_threshold(threshold, *older)
    try:
        yield
    finally:
        if gc.get_threshold()[0] == threshold:
            gc.set_threshold(young, *older)


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
) -> RunReport:
    """Drain every source until each has had nothing new for ``timeout_ms``.

    Per batch: onnxruntime calls, one database transaction, then one acknowledgement of that
    source, always in that order; a batch is acknowledged only after its rows are committed. The
    model runs on a background thread one batch ahead of the database (at most two batches are
    in memory, three with the decoding pool; see ``_Inference``). If anything fails, every batch
    not yet acknowledged is released for redelivery and the error propagates.

    ``progress``, when given, is called with the report so far (``seconds`` up to the last
    commit) after a committed batch, at most once per ``progress_interval_s``: the clock is
    read after each commit anyway, so watching a run costs nothing per message. It runs on the
    loop's thread, so it must return quickly; an exception from it fails the run.

    ``shadow``, when given, also classifies every batch (on the loop's thread, after the primary
    model): its rows go to ``shadow_prediction`` in the same transaction, and the report gives
    the agreement between the two and the shadow's accuracy. Without it nothing here changes.

    A batch of large messages (photos: ``POOL_MIN_PAYLOAD_BYTES``) is decoded and preprocessed
    by a pool of ``decode_threads`` threads while the model classifies the batch before it; then
    at most three batches are in memory (one decoding, one in the model, one being written),
    else two. By default the pool starts on the cores onnxruntime does not use (at least one)
    and doubles each time the model would wait for a batch still decoding, up to
    one per core: how much of a core a photo's decoding needs against the model depends on both,
    and a fixed split would leave either the model or the decoding short on many cores.
    ``jpeg_draft``: decode a JPEG at 1/2, 1/4 or 1/8 of its size when the model takes at most
    that (``preprocess.fit_uint8``).

    A batch holds at most ``batch_size`` messages and ``max_batch_bytes`` of payload, except
    that one message larger than that is a batch of its own (``vectorai.batching``).
    """
    report = RunReport(model_version=classifier.info.version,
                       shadow_model_version=shadow.info.version if shadow is not None else "")
    started = last_progress = time.perf_counter()
    next_report = started + progress_interval_s
    budgeted = [BudgetedSource(source, max_batch_bytes) for source in sources]
    collector = _CollectEveryBudget(max_batch_bytes)
    active = list(budgeted)
    in_flight: deque[_InFlight] = deque()
    inference = _Inference(classifier)
    # Decoding threads: as given, else from the cores onnxruntime does not use (at least one),
    # doubled each time the model would wait for a batch still decoding, up to one per core.
    lanes = decode_threads or default_decode_threads(getattr(classifier, "threads", available_cores()))
    most_lanes = decode_threads or max(lanes, available_cores())
    pool = ThreadPoolExecutor(max_workers=most_lanes, thread_name_prefix="decode")
    num_classes = len(classifier.class_names)

    def to_model(entry: _InFlight) -> None:
        nonlocal lanes
        if entry.job is None:
            if not entry.decoding.done() and lanes < most_lanes and report.batches:
                # Decoding holds the model back (not counting the first batch's start). Doubling
                # finds the pool a 16-core host needs within a few batches; one at a time did not.
                lanes = min(most_lanes, 2 * lanes)
                report.decode_threads = lanes
            with _batch_context(entry.source, entry.messages):
                entry.decoded = decode_batch(entry.source, entry.messages, classifier, limits,
                                             images=entry.decoding.result(), shadow=shadow)
                entry.decoding = None
                entry.job = inference.submit(entry.decoded)

    def submit_decoded() -> None:
        """Batches the pool has decoded go to the model, in the order they were consumed."""
        for entry in in_flight:
            if entry.job is None:
                if not entry.decoding.done():
                    return
                to_model(entry)

    def complete_oldest() -> None:
        nonlocal last_progress, next_report
        to_model(in_flight[0])
        submit_decoded()
        decoded, job = in_flight[0].decoded, in_flight[0].job
        following = in_flight[1].job if len(in_flight) > 1 else None
        with _batch_context(decoded.source, decoded.messages):
            batch = label_batch(decoded, job.result(spare=following), classifier)
            if shadow is not None and batch.rows:
                shadow_input = (decoded.shadow_pixels if _own_shadow_input(classifier, shadow)
                                else decoded.pixels)
                if shadow_input is not None:
                    _score_shadow(report, batch, shadow_input, shadow)
                else:  # its preprocessing failed (logged in _shadow_input)
                    for counts in (report, report.source(batch.source.name)):
                        counts.shadow_errors += 1
            _record(report, batch, results_db.write_results(database, batch.rows, batch.dead,
                                                            batch.shadow_rows))
            batch.source.acknowledge(batch.messages)
        in_flight.popleft()
        last_progress = time.perf_counter()
        if progress is not None and last_progress >= next_report:
            report.seconds = last_progress - started
            progress(report)
            next_report = last_progress + progress_interval_s
        log.info("batch of %d from %s committed (%d so far)", len(batch.messages), batch.source.name,
                 report.consumed)

    unqueued: tuple[Transport, Sequence[ReceivedMessage]] | None = None
    with _fewer_young_collections(YOUNG_OBJECTS_PER_MESSAGE * batch_size):
        try:
            turn = 0
            while active or in_flight:
                want = (batch_size if max_messages is None
                        else min(batch_size, max_messages - report.consumed))
                messages: Sequence[ReceivedMessage] = []
                if active and want > 0:
                    source = active[turn % len(active)]
                    turn += 1
                    # With batches in flight, only take what has already arrived: waiting for new
                    # messages must never hold back the commit of those already classified.
                    messages = source.next_batch(want, 0 if in_flight else timeout_ms)
                    if messages:
                        collector.consumed(messages)
                        report.consumed += len(messages)
                        report.source(source.name).consumed += len(messages)
                        transport = source.transport
                        unqueued = (transport, messages)  # released too if decoding fails
                        entry = _InFlight(transport, messages)
                        with _batch_context(transport, messages):
                            if _worth_a_pool(messages):
                                entry.decoding = _Decoding(pool, messages, num_classes, limits,
                                                           _decode_spec(classifier, shadow), jpeg_draft, lanes)
                                report.decode_threads = lanes
                            else:
                                entry.decoded = decode_batch(transport, messages, classifier, limits,
                                                             jpeg_draft=jpeg_draft, shadow=shadow)
                                entry.job = inference.submit(entry.decoded)
                        in_flight.append(entry)
                        unqueued = None
                    elif not in_flight:
                        active.remove(source)  # nothing new for timeout_ms: drained
                elif active:
                    active.clear()  # max_messages reached
                submit_decoded()
                # Keep one batch in the model while the previous one is written (and, with the
                # pool, one more decoding); with nothing new, finish everything before waiting.
                ahead = 2 if in_flight and in_flight[-1].decoding is not None else 1
                if len(in_flight) > ahead or (in_flight and not messages):
                    complete_oldest()
            for source in budgeted:  # max_messages reached with messages delivered beyond it
                _release(source.transport, source.take_carried())
        except BaseException:
            for entry in in_flight:
                if entry.decoding is not None:
                    entry.decoding.cancel()
            batches = [(entry.source, entry.messages) for entry in reversed(in_flight)]
            carried = [(source.transport, source.take_carried()) for source in budgeted if source.carried]
            for batch_source, batch in carried + ([unqueued] if unqueued else []) + batches:  # newest first
                _release(batch_source, batch)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            inference.close()
    # Throughput excludes the final wait that proved each source was drained.
    report.seconds = last_progress - started
    return report
