"""The batch byte budget: batch assembly for any message sizes, the local queue's bounded read,
and the predict loop keeping to it."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.helpers import tiny_onnx_model
from vectorai import db as results_db
from vectorai.batching import BudgetedSource
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai.predict import run_predictions
from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport
from vectorai.transports.budget import take_within_budget
from vectorai.transports.local import LocalTransport
from vectorai.transports.pubsub.subscriber import MAX_MESSAGE_BYTES, pull_size


class _ListTransport(Transport):
    """Delivers a fixed list of messages in lots of the sizes given (cut to what is asked)."""

    name = "list"

    def __init__(self, sizes: list[int], lots: list[int]) -> None:
        self._queue = [ReceivedMessage("list", b"x" * size, {"id": str(i)}, str(i)) for i, size in enumerate(sizes)]
        self._lots = lots
        self.deliveries: list[int] = []

    def consume_batch(self, max_messages, timeout_ms):
        lot = self._lots[len(self.deliveries) % len(self._lots)] if self._lots else max_messages
        take = min(max_messages, lot, len(self._queue))
        delivered, self._queue = self._queue[:take], self._queue[take:]
        if delivered:
            self.deliveries.append(len(delivered))
        return delivered

    def publish(self, messages):
        raise NotImplementedError

    def flush(self, timeout_s):
        pass

    def acknowledge(self, messages):
        pass

    def close(self):
        pass


def _check_batches(batches: list[list[ReceivedMessage]], sizes: list[int], max_messages: int, budget: int) -> None:
    assert [m.position for batch in batches for m in batch] == [str(i) for i in range(len(sizes))]  # none lost, in order
    for batch in batches:
        assert 1 <= len(batch) <= max_messages
        total = sum(len(m.payload) for m in batch)
        assert total <= budget or len(batch) == 1, f"a batch of {len(batch)} holds {total} bytes > {budget}"


def _drain(source: BudgetedSource, max_messages: int) -> list[list[ReceivedMessage]]:
    batches = []
    while batch := source.next_batch(max_messages, 0):
        batches.append(batch)
    return batches


sizes_strategy = st.lists(st.integers(0, 300), max_size=60)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_strategy, lots=st.lists(st.integers(1, 70), max_size=5),
       max_messages=st.integers(1, 40), budget=st.integers(1, 1000))
def test_no_batch_passes_the_budget_unless_alone_and_nothing_is_lost_or_reordered(sizes, lots, max_messages, budget):
    source = BudgetedSource(_ListTransport(sizes, lots), budget)
    _check_batches(_drain(source, max_messages), sizes, max_messages, budget)
    assert source.carried == 0


@settings(max_examples=200, deadline=None)
@given(sizes=sizes_strategy, budget=st.integers(1, 1000))
def test_take_within_budget_is_the_longest_prefix_that_fits(sizes, budget):
    """A batch closes only when its next message would pass the budget (or holds one message)."""
    take = take_within_budget(sizes, 1000, budget)
    assert take == (0 if not sizes else max(1, max(n for n in range(len(sizes) + 1) if sum(sizes[:n]) <= budget)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=30), max_messages=st.integers(1, 20),
       budget=st.integers(1, 800))
def test_the_local_queue_reads_no_further_than_the_budget(sizes, max_messages, budget):
    with tempfile.TemporaryDirectory() as folder:
        with LocalTransport(folder, "t") as producer:
            producer.publish([OutgoingMessage(b"y" * size, {"id": str(i)}) for i, size in enumerate(sizes)])
            producer.flush()
        delivered: list[list[ReceivedMessage]] = []
        with LocalTransport(folder, "t") as queue:
            real_consume = queue.consume_batch
            queue.consume_batch = lambda n, t: delivered.append(real_consume(n, t)) or delivered[-1]
            batches = _drain(BudgetedSource(queue, budget), max_messages)
    expected = [ReceivedMessage("local", b"", {}, f"t@{i + 1}") for i in range(len(sizes))]
    assert [m.position for batch in batches for m in batch] == [m.position for m in expected]
    for lot in delivered:  # what the queue read at once, not only what a batch held
        assert len(lot) == 1 or sum(len(m.payload) for m in lot) <= budget


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, MAX_MESSAGE_BYTES), min_size=1, max_size=60),
       max_messages=st.integers(1, 256), budget=st.integers(1, 3 * MAX_MESSAGE_BYTES))
def test_a_pubsub_pull_passes_the_budget_only_with_a_message_larger_than_any_before(sizes, max_messages, budget):
    """Pub/Sub cannot bound a pull in bytes, so the subscriber sizes each pull by the largest
    payload so far (Pub/Sub's 10 MB limit before the first): a pull of several messages passes
    the budget only when one of them is larger than every message pulled before."""
    largest, start = 0, 0
    while start < len(sizes):
        asked = pull_size(max_messages, budget, largest)
        assert 1 <= asked <= max_messages
        pulled = sizes[start:start + asked]
        if len(pulled) > 1 and sum(pulled) > budget:
            assert largest and max(pulled) > largest
        largest, start = max(largest, 1, *pulled), start + len(pulled)


@pytest.fixture
def model(tmp_path):
    tiny_onnx_model(tmp_path / "tiny.onnx")
    return OnnxClassifier(tmp_path / "tiny.onnx")


def test_the_predict_loop_keeps_each_batch_within_max_batch_bytes(tmp_path, model):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    messages = [encode_image(image, f"img-{i}", encoding="raw") for i, image in enumerate(images)]
    big = encode_image(rng.integers(0, 256, (40, 40), dtype=np.uint8), "big", encoding="raw")  # 1,600 bytes
    messages.insert(10, big)
    with LocalTransport(tmp_path / "q", "t") as producer:
        producer.publish(messages)
        producer.flush()
    seen: list[int] = []

    class Watched(LocalTransport):
        def acknowledge(self, batch):
            seen.append(sum(len(m.payload) for m in batch) if len(batch) > 1 else -len(batch[0].payload))
            super().acknowledge(batch)

    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with Watched(tmp_path / "q", "t") as source:
        report = run_predictions([source], model, database, batch_size=256, timeout_ms=50, max_batch_bytes=500)
        assert source.lag() == 0
    assert report.predicted == 31 and report.dead_letters == 0
    assert results_db.Prediction.select().count() == 31
    assert all(0 < total <= 500 for total in seen if total > 0)
    assert seen.count(-1600) == 1  # the large one alone
    assert report.batches == len(seen) and report.batches >= 31 * 64 // 500


def test_messages_delivered_past_max_messages_come_back_on_the_next_run(tmp_path, model):
    images = np.random.default_rng(2).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    with LocalTransport(tmp_path / "q", "t") as producer:
        producer.publish([encode_image(image, f"img-{i}", encoding="raw") for i, image in enumerate(images)])
        producer.flush()
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    runs = []
    for limit in (5, None):
        with LocalTransport(tmp_path / "q", "t") as source:
            runs.append(run_predictions([source], model, database, batch_size=4, timeout_ms=50,
                                        max_messages=limit, max_batch_bytes=150))
    assert (runs[0].predicted, runs[1].predicted) == (5, 7)
    assert sorted(p.message_id for p in results_db.Prediction.select()) == sorted(f"img-{i}" for i in range(12))
