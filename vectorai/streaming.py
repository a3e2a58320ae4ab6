"""Send a stream sample to a transport in the documented message format."""

from __future__ import annotations

import datetime as dt
import time
from typing import Callable, Sequence

import numpy as np

from vectorai.messages import encode_image
from vectorai.split import image_digest
from vectorai.transports.base import Transport


def message_id(dataset: str, index: int, image: np.ndarray) -> str:
    """``<dataset>-<index>-<content digest>``: re-sending the same sample never makes new rows,
    and an id names one image, so another sample under the same name (another seed's split, a
    grown dataset) never passes its images off as already predicted."""
    return f"{dataset}-{index:08d}-{image_digest(image)[:16]}"


def publish_images(
    transport: Transport,
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[int] | None,
    *,
    dataset: str,
    encoding: str,
    timeout_s: float,
    chunk: int = 1000,
    progress: Callable[[int, int, int], None] | None = None,
    confirm_interval_s: float = 1.0,
) -> list[str]:
    """Publish every image and wait until the transport confirmed all of them.

    Returns the ids sent. Raises TransportError when any message was not confirmed, in which
    case the caller must not record the stream as sent.

    ``progress(sent, confirmed, total)`` is called after each chunk of ``chunk`` images and
    once all are confirmed. With it, the transport is also flushed after a chunk once
    ``confirm_interval_s`` has passed since the last flush, so that ``confirmed`` moves during a
    long send: one wait for the broker a second, where a flush per chunk would stop the
    producer's pipelining every thousand images. Without it nothing is flushed until the end.
    """
    ids: list[str] = []
    total = len(images)
    confirmed = 0
    next_flush = time.monotonic() + confirm_interval_s
    produced_at = dt.datetime.now(dt.timezone.utc)
    for start in range(0, len(images), chunk):
        batch = []
        for index in range(start, min(start + chunk, len(images))):
            label = None if labels is None or labels[index] < 0 else int(labels[index])
            ident = message_id(dataset, index, images[index])
            batch.append(encode_image(images[index], ident, label=label, encoding=encoding,
                                      produced_at=produced_at))
            ids.append(ident)
        transport.publish(batch)
        if progress is not None:
            if time.monotonic() >= next_flush:
                transport.flush(timeout_s)
                confirmed = len(ids)
                next_flush = time.monotonic() + confirm_interval_s
            progress(len(ids), confirmed, total)
    transport.flush(timeout_s)
    if progress is not None:
        progress(len(ids), len(ids), total)
    return ids
