"""A batch's stages on the loop's thread: decode and preprocess, label the model's output; and
the name a batch goes by in an error. (Scoring it with a shadow model: ``shadow``.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from vectorai import db as results_db
from vectorai.errors import BatchError, VectoraiError
from vectorai.inference import OnnxClassifier
from vectorai.messages import (DecodedImages, DecodeLimits, Failures, InvalidMessage, decode_messages,
                               failure_reason, stored_content_type)
from vectorai.predict.dead_letters import dead_letter
from vectorai.preprocess import preprocess_images, stack_if_uniform
from vectorai.transports.base import ReceivedMessage, Transport

#: The name the loop's log lines have always gone by, whichever of its modules logs them.
log = logging.getLogger("vectorai.predict")


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
    #: The transport's messages that dead letters stand for beyond themselves (a Kafka record
    #: batch that could not be read: one dead letter for all its offsets).
    more_dead: int = 0


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
    #: As ``DecodedBatch.more_dead``.
    more_dead: int = 0
    #: Which of the decoded messages ``rows`` are for, in order, when the model's output left
    #: some out (``label_batch``); None: every one.
    model_rows: list[int] | None = None
    #: Shadow rows left out because the shadow model's output for their image was not finite.
    shadow_dropped: int = 0


def decode_batch(
    source: Transport, messages: Sequence[ReceivedMessage], classifier: OnnxClassifier,
    limits: DecodeLimits = DecodeLimits(), *, jpeg_draft: bool = False, images: DecodedImages | None = None,
    shadow: OnnxClassifier | None = None,
) -> DecodedBatch:
    """Decode and preprocess a batch into one array (and the ``shadow``'s, when it preprocesses
    otherwise); poison goes to ``dead`` with the reason.

    ``images``: the batch already decoded (by the pool, ``concurrency.Decoding``); only the rest
    is done."""
    now = results_db.utc_now()
    if images is None:
        images = decode_messages(messages, len(classifier.class_names), limits, decode_spec(classifier, shadow),
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
                     else model_pixels(pixels, classifier.spec))
        except Exception:  # noqa: BLE001 - some image is bad: find it one by one, keep the rest
            good, rows = _preprocess_one_by_one(decoded, pixels, classifier, failures)
            decoded, labels, stamps = _select(good, decoded, labels, stamps)
            pixels = [pixels[i] for i in good]
            batch = np.stack(rows) if rows else batch
    shadow_batch = _shadow_input(shadow, pixels) if own_shadow_input(classifier, shadow) and decoded else None
    dead = [dead_letter(message, reason, now) for message, reason in failures]
    more_dead = sum(message.stands_for - 1 for message, _ in failures)
    return DecodedBatch(source, messages, decoded, labels, stamps, batch, dead, now, duplicates, shadow_batch,
                        more_dead)


def own_shadow_input(classifier: OnnxClassifier, shadow: OnnxClassifier | None) -> bool:
    """Whether the shadow needs its own input (another card or size) rather than the primary's batch."""
    return shadow is not None and shadow.preprocessing != classifier.preprocessing


def decode_spec(classifier: OnnxClassifier, shadow: OnnxClassifier | None):
    """The size decoding may bring images to on the way (our own preprocessing); None when a
    model's card, or a shadow of its own, must see the decoded pixels as they are."""
    return None if own_shadow_input(classifier, shadow) else classifier.decode_spec


def model_pixels(pixels: np.ndarray | list[np.ndarray], spec) -> np.ndarray:
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


def _preprocess_one_by_one(decoded: list[ReceivedMessage], pixels, classifier: OnnxClassifier,
                           failures: Failures) -> tuple[list[int], list[np.ndarray]]:
    """The indices of the images that preprocess on their own, and their rows; each other one
    becomes its message's failure."""
    good: list[int] = []
    rows = []
    for i, message in enumerate(decoded):
        row = failures.run(message, _preprocess_one, pixels[i], classifier)
        if row is not None:
            rows.append(row)
            good.append(i)
    return good, rows


def _preprocess_one(image: np.ndarray, classifier: OnnxClassifier) -> np.ndarray:
    return classifier.preprocess([image])[0]


def _shadow_input(shadow: OnnxClassifier, pixels) -> np.ndarray | None:
    """The shadow's own input for images the primary model took; None when one of them does not
    suit the shadow: shadow scoring is best effort and never costs the primary its rows."""
    try:
        return shadow.preprocess(pixels)
    except Exception as err:  # noqa: BLE001 - logged here, counted by ShadowScorer; no shadow rows
        log.warning("the shadow model %s could not preprocess a batch (%s: %s); no shadow rows for it",
                    shadow.info.version, type(err).__name__, one_line(err))
        return None


def one_line(err: BaseException) -> str:
    """An exception's text on one line, at most 500 characters, for a log line."""
    return " ".join(str(err).split())[:500]


def _first_of_each_id(messages: Sequence[ReceivedMessage]) -> list[int] | None:
    """Indices of the first message of each (source, id), or None when no id repeats."""
    first: dict[tuple[str, str], int] = {}
    for i, message in enumerate(messages):
        first.setdefault((message.source, message.attributes["id"]), i)
    return None if len(first) == len(messages) else list(first.values())


def _select(indices: list[int], *columns: list) -> list[list]:
    """The given rows of parallel lists."""
    return [[column[i] for i in indices] for column in columns]


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    # Decoding has put every stamp in UTC already (where an overflow is one message's failure).
    return None if value is None else value.replace(tzinfo=None)


def not_finite_reason(classifier: OnnxClassifier) -> str:
    """The dead letter's reason for an image the model gave NaN or an infinity for (as every
    reason: one storable line of at most MAX_REASON characters, whatever the version holds)."""
    return failure_reason(InvalidMessage(f"the model's output for this image is not finite (NaN or infinity "
                                         f"among model {classifier.info.version}'s class probabilities)"))


def finite_rows(probabilities: np.ndarray) -> np.ndarray:
    """Which rows of a model's output are finite throughout: a broken or foreign model can give
    NaN or an infinity for one image, which no column can store faithfully (SQLite stores NaN as
    NULL; PostgreSQL would keep a row no one can rank)."""
    return np.isfinite(probabilities).all(axis=1)


def label_batch(batch: DecodedBatch, probabilities: np.ndarray, classifier: OnnxClassifier) -> ClassifiedBatch:
    """Turn the model's output for a decoded batch into prediction rows; a message whose output
    is not finite becomes a dead letter instead (``not_finite_reason``)."""
    rows: list[dict[str, object]] = []
    decoded, labels, stamps, dead, kept = batch.decoded, batch.labels, batch.produced_at, batch.dead, None
    if decoded:
        finite = finite_rows(probabilities)
        if not finite.all():
            kept = np.flatnonzero(finite).tolist()
            reason = not_finite_reason(classifier)
            lost = [dead_letter(decoded[i], reason, batch.received_at) for i in np.flatnonzero(~finite).tolist()]
            log.warning("model %s gave a non-finite output for %d images of a %s; they are dead letters",
                        classifier.info.version, len(lost), describe_batch(batch.source, batch.messages))
            dead = dead + lost
            decoded, labels, stamps = _select(kept, decoded, labels, stamps)
            probabilities = probabilities[kept]
        rows = _prediction_rows(batch, decoded, labels, stamps, probabilities, classifier)
    return ClassifiedBatch(batch.source, batch.messages, rows, dead, batch.duplicates,
                           more_dead=batch.more_dead, model_rows=kept)


def _prediction_rows(batch: DecodedBatch, decoded: list[ReceivedMessage], labels: list[int | None],
                     stamps: list[dt.datetime | None], probabilities: np.ndarray,
                     classifier: OnnxClassifier) -> list[dict[str, object]]:
    """The prediction row of each decoded message, from its row of the model's (finite) output."""
    rows: list[dict[str, object]] = []
    classes = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(classes)), classes]
    margins, given = review_figures(probabilities, confidences, labels)
    names = classifier.class_names
    version = classifier.info.version
    produced: dict[dt.datetime | None, dt.datetime | None] = {}  # messages share stamps
    for message, label, stamp, cls, confidence, margin, label_probability in zip(
            decoded, labels, stamps, classes.tolist(), confidences.tolist(), margins, given):
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
            "margin": margin,
            "label_probability": label_probability,
        })
    return rows


def review_figures(probabilities: np.ndarray, confidences: np.ndarray,
                   labels: Sequence[int | None]) -> tuple[list[float], list[float | None]]:
    """Per row: the margin between the two most probable classes (the top one's probability
    alone for a one-class model), and the probability of the row's label (None unlabelled):
    what "review next" and "suspicious labels" rank by."""
    if probabilities.shape[1] > 1:
        margins = confidences - np.partition(probabilities, -2, axis=1)[:, -2]
    else:
        margins = confidences
    given: list[float | None] = [None] * len(labels)
    labelled = [i for i, label in enumerate(labels) if label is not None]
    if labelled:
        values = probabilities[labelled, [labels[i] for i in labelled]].tolist()
        for i, value in zip(labelled, values):
            given[i] = value
    return margins.tolist(), given


@contextlib.contextmanager
def batch_context(source: Transport, messages: Sequence[ReceivedMessage]) -> Iterator[None]:
    """Name the batch (source, positions) in an error that concerns all of it. Our own errors
    keep their type and their one line, the batch added at its end; anything else becomes a
    BatchError, so that Luigi still shows one line."""
    try:
        yield
    except VectoraiError as err:
        err.args = (f"{err} (in the {describe_batch(source, messages)}, released for redelivery)",)
        raise
    except Exception as err:  # noqa: BLE001 - wrapped, not swallowed
        raise BatchError(describe_batch(source, messages), f"{type(err).__name__}: {err}") from err


def describe_batch(source: Transport, messages: Sequence[ReceivedMessage]) -> str:
    """A batch as an error names it: its size, source and positions."""
    where = messages[0].position if len(messages) == 1 else f"{messages[0].position} .. {messages[-1].position}"
    return f"batch of {len(messages)} from {source.name} ({where})"
