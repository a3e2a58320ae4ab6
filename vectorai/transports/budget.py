"""How many messages of given sizes make one batch within a byte budget.

Here, below every transport, so that a transport can bound what it reads (the local queue) as
the batching above it bounds what it hands on (``vectorai.batching``), and the results database
can page its inserts, with imports going one way only.
"""

from __future__ import annotations

from typing import Sequence


def take_within_budget(sizes: Sequence[int], max_messages: int, max_bytes: int) -> int:
    """How many of the first ``sizes`` make one batch: at most ``max_messages`` of them, and
    no more than fit in ``max_bytes`` together, except that the first is always taken (a
    message larger than the budget is a batch of its own). 0 only when ``sizes`` is empty or
    ``max_messages`` is 0."""
    total = 0
    for count, size in enumerate(sizes[:max_messages]):
        if count and total + size > max_bytes:
            return count
        total += size
    return min(len(sizes), max_messages)
