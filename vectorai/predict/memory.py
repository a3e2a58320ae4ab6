"""The loop's memory: fewer collections by object count, a full one per budget of bytes, and
glibc's malloc told to give large buffers back."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator, Sequence

from vectorai.batching import payload_size
from vectorai.transports.base import ReceivedMessage

#: While the loop runs, the cyclic garbage collector's youngest generation is collected only
#: after this many container objects per message of a batch have been allocated and not freed.
#: Each message in flight holds about ten (a Kafka record, its headers, its attributes, ...), and
#: a few batches are in flight at once; with Python's default of 700 the collector ran every 70
#: or so messages, moving them all into older generations and walking them again there: 6-10 µs
#: of the loop's CPU per raw Kafka image, under 1 with this (``gc.callbacks``, 30,000 images).
YOUNG_OBJECTS_PER_MESSAGE = 100


class CollectEveryBudget:
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
        """Count a consumed batch's payload; collect once the budget is reached."""
        self._since += sum(payload_size(message) for message in messages)
        if self._since >= self.budget:
            self._since = 0
            gc.collect()


@contextlib.contextmanager
def fewer_young_collections(threshold: int) -> Iterator[None]:
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
