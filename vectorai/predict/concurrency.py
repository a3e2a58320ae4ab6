"""The threads beside the loop: onnxruntime on one background thread, a batch's chunks shared
with the loop's thread (``Job``, ``Inference``), and the pool that decodes batches of photos
(``Decoding``, ``DecodePool``)."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from vectorai.inference import OnnxClassifier, available_cores
from vectorai.messages import DecodedImages, DecodeLimits, Failures, decode_messages
from vectorai.predict.stages import DecodedBatch
from vectorai.transports.base import ReceivedMessage

#: Images per onnxruntime call. A batch is split so that the loop's thread can take part of it
#: when it would otherwise wait (``Job``). Measured on 2 cores: 32-image chunks ran as fast as
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

#: A batch is decoded by the pool (``Decoding``) when its messages average at least this many
#: bytes. A smaller message is mostly Python work (attributes, a small inflate) that holds the
#: GIL, and a second thread decoding it only queues for the GIL (see ``Inference``); a photo is
#: Pillow's and numpy's C code, which releases it, so pool threads decode side by side with the
#: model. (A 28x28 PNG is under 1 KiB; a 640x480 JPEG tens of KiB.)
POOL_MIN_PAYLOAD_BYTES = 4096
#: Messages per task of the decoding pool: small enough that its threads share a batch evenly.
DECODE_SLICE = 16


def chunk_images(pixels: np.ndarray) -> int:
    """Images per onnxruntime call for a batch of these pixels."""
    per_image = 4 * int(np.prod(pixels.shape[1:])) if pixels.ndim > 1 else 4
    return max(1, min(CHUNK, CHUNK_INPUT_BYTES // max(per_image, 1)))


class Job:
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

    def result(self, spare: Job | None = None) -> np.ndarray:
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


class Inference:
    """onnxruntime calls on one background thread, batch after batch in submission order.

    ``session.run`` releases the GIL, so while the model classifies batch N, the loop's thread
    writes batch N-1, acknowledges it and consumes and decodes batch N+1: the model is never idle
    waiting for Python. When the loop is the faster of the two it does not idle either: waiting
    for batch N, it classifies the chunks of N the background thread has not reached, then
    those of N+1 until the background thread is done with N (``Job.result``).
    So the model gets every core while the loop has nothing else to do, and every core but the
    loop's while it has (see ``inference.default_threads``).

    Decoding small messages stays on the loop's thread: decoding chunks on the background thread
    as well made the two threads queue for the GIL, and local+SQLite fell from 6,900-7,900 to
    5,700-6,000 images/s.
    """

    def __init__(self, classifier: OnnxClassifier) -> None:
        self._classifier = classifier
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")

    def submit(self, batch: DecodedBatch) -> Job:
        """Start classifying ``batch`` once the batches before it are done."""
        job = Job(self._classifier, batch.pixels)  # no pixels when nothing decoded: no chunks
        if batch.decoded:
            self._pool.submit(self._work, job)
        return job

    @staticmethod
    def _work(job: Job) -> None:
        while job.run_chunk(from_back=False):
            pass

    def close(self) -> None:
        """Wait for the chunk being classified; start no other."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def default_decode_threads(inference_threads: int) -> int:
    """Threads that decode and preprocess: the cores onnxruntime does not use, at least one."""
    return max(1, available_cores() - inference_threads)


def worth_a_pool(messages: Sequence[ReceivedMessage]) -> bool:
    """Whether the messages are large enough (photos) for the pool to decode them."""
    total = sum(len(message.payload) for message in messages if isinstance(message.payload, (bytes, bytearray)))
    return total >= POOL_MIN_PAYLOAD_BYTES * len(messages)


class Decoding:
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
        """Whether every slice is decoded (or one failed)."""
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


class DecodePool:
    """The threads that decode batches of photos while the model classifies the batch before.

    ``lanes`` threads take each batch: as given, else the cores onnxruntime does not use (at
    least one), doubled each time the model would wait for a batch still decoding (``widen``),
    up to one per core. How much of a core a photo's decoding needs against the model depends on
    both, and a fixed split would leave either the model or the decoding short on many cores."""

    def __init__(self, decode_threads: int | None, inference_threads: int | None, num_classes: int,
                 limits: DecodeLimits, spec, jpeg_draft: bool) -> None:
        self.lanes = decode_threads or default_decode_threads(
            available_cores() if inference_threads is None else inference_threads)
        self._most = decode_threads or max(self.lanes, available_cores())
        self._pool = ThreadPoolExecutor(max_workers=self._most, thread_name_prefix="decode")
        self._arguments = (num_classes, limits, spec, jpeg_draft)

    def decode(self, messages: Sequence[ReceivedMessage]) -> Decoding:
        """Start decoding a batch on ``lanes`` threads."""
        return Decoding(self._pool, messages, *self._arguments, self.lanes)

    def widen(self) -> bool:
        """Double the threads a batch gets, up to the most there may be; False at the most.
        Doubling finds the pool a 16-core host needs within a few batches; one at a time did not."""
        if self.lanes >= self._most:
            return False
        self.lanes = min(self._most, 2 * self.lanes)
        return True

    def close(self) -> None:
        """Wait for the slices being decoded; start no other."""
        self._pool.shutdown(wait=True, cancel_futures=True)
