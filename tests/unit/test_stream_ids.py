"""StreamData's ids: one id names one image, so a different image sent under a name used before
(another seed's sample, another file of the same name) never passes for one already predicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vectorai.messages import id_problem
from vectorai.streaming import publish_images
from vectorai.transports import open_transport


def publish(tmp_path: Path, images: np.ndarray, name: str = "holdout") -> list[str]:
    with open_transport("local", root=tmp_path, topic="t") as producer:
        return publish_images(producer, images, None, dataset=name, encoding="raw", timeout_s=5)


def test_an_id_names_one_image(tmp_path):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    second = first.copy()
    second[3, 14, 14] ^= 1  # one pixel of one image differs
    ids, again, other = publish(tmp_path, first), publish(tmp_path, first.copy()), publish(tmp_path, second)
    assert ids == again  # re-sending the same sample makes no new rows
    assert [a == b for a, b in zip(ids, other)] == [True, True, True, False, True, True]
    assert len(set(ids)) == 6 and all(i.startswith("holdout-0000000") for i in ids)
    assert all(id_problem(i) is None for i in publish(tmp_path, first[:1], name="n" * 100))


def test_the_same_image_twice_in_a_sample_is_two_messages(tmp_path):
    # Benchmarks and the cluster test tile a sample: every message still gets a row of its own.
    tiled = np.tile(np.arange(64, dtype=np.uint8).reshape(1, 8, 8), (3, 1, 1))
    assert len(set(publish(tmp_path, tiled))) == 3
