"""Send a stream sample to a transport in the documented message format."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import numpy as np

from vectorai.messages import encode_image
from vectorai.transports.base import Transport


def message_id(dataset: str, index: int) -> str:
    """Deterministic id (dataset + index): re-sending the same sample never makes new rows."""
    return f"{dataset}-{index:08d}"


def publish_images(
    transport: Transport,
    images: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[int] | None,
    *,
    dataset: str,
    encoding: str,
    timeout_s: float,
    chunk: int = 1000,
) -> list[str]:
    """Publish every image and wait until the transport confirmed all of them.

    Returns the ids sent. Raises TransportError when any message was not confirmed, in which
    case the caller must not record the stream as sent.
    """
    ids: list[str] = []
    produced_at = dt.datetime.now(dt.timezone.utc)
    for start in range(0, len(images), chunk):
        batch = []
        for index in range(start, min(start + chunk, len(images))):
            label = None if labels is None or labels[index] < 0 else int(labels[index])
            ident = message_id(dataset, index)
            batch.append(encode_image(images[index], ident, label=label, encoding=encoding,
                                      produced_at=produced_at))
            ids.append(ident)
        transport.publish(batch)
    transport.flush(timeout_s)
    return ids
