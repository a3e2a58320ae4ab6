import contextlib
import gc
import sqlite3
import threading
import time
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.helpers import expected_classes, tiny_onnx_model
from vectorai import db as results_db
from vectorai.errors import DatabaseError, ModelError, TransportError
from vectorai.inference import OnnxClassifier
from vectorai.messages import encode_image
from vectorai import predict
from vectorai.predict import concurrency, run_predictions
from vectorai.predict.memory import CollectEveryBudget
from vectorai.preprocess import PreprocessSpec, preprocess_images
from vectorai.transports import open_transport
from vectorai.transports.base import OutgoingMessage
from vectorai.transports.local import LocalTransport


@pytest.fixture
def classifier(tmp_path):
    weights = tiny_onnx_model(tmp_path / "tiny.onnx")
    return OnnxClassifier(tmp_path / "tiny.onnx"), weights


def test_stream_to_database_with_poison_messages(tmp_path, classifier):
    model, weights = classifier
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    labels = expected_classes(weights, preprocess_images(images, model.spec))
    outgoing = [encode_image(im, f"img-{i}", label=int(lb), encoding="png" if i % 2 else "raw")
                for i, (im, lb) in enumerate(zip(images, labels))]
    poison = [
        OutgoingMessage(b"garbage", {"id": "bad-png", "content-type": "image/png"}),
        OutgoingMessage(b"\x00" * 4, {"content-type": "application/x-ndarray", "dtype": "uint8", "shape": "2,2"}),
        OutgoingMessage(b"\x00" * 64, {"id": "bad-label", "content-type": "application/x-ndarray",
                                        "dtype": "uint8", "shape": "8,8", "label": "99"}),
        OutgoingMessage(np.full(64, 1e6, "<f4").tobytes(), {"id": "bad-range", "content-type": "application/x-ndarray",
                                                            "dtype": "float32", "shape": "8,8"}),
    ]
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish(outgoing[:20] + poison + outgoing[20:])
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=16, timeout_ms=100)
        assert source.lag() == 0  # everything, poison included, acknowledged

    rows = list(results_db.Prediction.select().order_by(results_db.Prediction.message_id))
    assert sorted(r.message_id for r in rows) == sorted(f"img-{i}" for i in range(40))
    assert all(r.predicted_class == r.true_label for r in rows)
    assert all(r.predicted_name == f"class{r.predicted_class}" and 0 < r.confidence <= 1 for r in rows)
    assert all(r.model_version == "tiny-v1" and r.produced_at is not None for r in rows)
    stored = {r.message_id: bytes(r.image) for r in rows}
    assert stored["img-1"] == outgoing[1].payload
    dead = {d.message_id: d.reason for d in results_db.DeadLetter.select()}
    assert set(dead) == {"bad-png", None, "bad-label", "bad-range"}
    assert "cannot decode image" in dead["bad-png"] and "missing 'id'" in dead[None]
    assert "outside the model's 3 classes" in dead["bad-label"] and "[0, 1] or [0, 255]" in dead["bad-range"]
    summary = report.to_dict()
    assert summary["consumed"] == 44 and summary["predicted"] == 40 and summary["dead_letters"] == 4
    assert summary["accuracy"] == 1.0 and sum(summary["per_class"].values()) == 40


def test_a_stored_raw_image_can_be_read_back_with_its_stored_content_type(tmp_path, classifier):
    model, _ = classifier
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    floats = rng.random((8, 8), dtype=np.float32)
    sent = {"new": grey, "first-version": floats, "mixed": grey}
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([
            encode_image(grey, "new", encoding="raw"),  # dtype and shape as content-type parameters
            OutgoingMessage(floats.tobytes(), {"id": "first-version", "content-type": "application/x-ndarray",
                                               "dtype": "float32", "shape": "8,8"}),
            OutgoingMessage(grey.tobytes(), {"id": "mixed", "content-type": "application/x-ndarray;dtype=uint8",
                                             "shape": "8,8"}),
        ])
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        run_predictions([source], model, database, batch_size=16, timeout_ms=100)

    rows = {r.message_id: r for r in results_db.Prediction.select()}
    assert rows["new"].content_type == "application/x-ndarray; dtype=uint8; shape=8,8"
    assert rows["first-version"].content_type == "application/x-ndarray; dtype=float32; shape=8,8"
    assert rows["mixed"].content_type == "application/x-ndarray; dtype=uint8; shape=8,8"
    for message_id, row in rows.items():
        parameters = dict(part.strip().split("=") for part in row.content_type.split(";")[1:])
        dtype = {"uint8": np.uint8, "float32": "<f4"}[parameters["dtype"]]
        shape = tuple(int(d) for d in parameters["shape"].split(","))
        np.testing.assert_array_equal(np.frombuffer(bytes(row.image), dtype).reshape(shape), sent[message_id])


def test_redelivered_messages_are_not_stored_twice(tmp_path, classifier):
    model, _ = classifier
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    messages = [encode_image(np.zeros((8, 8), np.uint8), f"x{i}") for i in range(10)]
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish(messages + messages)  # the same sample sent twice
        producer.flush(5)
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=7, timeout_ms=50)
    assert results_db.Prediction.select().count() == 10
    assert report.predicted == 10


def test_an_id_sent_twice_in_one_batch_stores_the_first_image(tmp_path, classifier):
    """Within one batch the first message of an id wins, and the images after it keep their own
    predictions (the batch's pixels are filtered along with its messages)."""
    model, weights = classifier
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    classes = expected_classes(weights, preprocess_images(images, model.spec))
    assert len(set(classes.tolist())) > 1  # else a mix-up of images could not show
    ids = [f"d{i}" for i in range(12)]
    ids[5], ids[9] = ids[2], ids[2]  # images 5 and 9 re-use image 2's id
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(image, key) for image, key in zip(images, ids)])
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=12, timeout_ms=50)
    stored = {r.message_id: r.predicted_class for r in results_db.Prediction.select()}
    expected = {key: int(cls) for key, cls in zip(ids, classes)}
    expected["d2"] = int(classes[2])  # the first image of d2, not the later ones
    assert stored == expected
    assert report.consumed == 12 and report.predicted == 10


class _WatchedQueue(LocalTransport):
    """The real local queue, noting at each acknowledgement which ids the database holds."""

    def __init__(self, *args, database_path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.database_path = database_path
        self.consumed: list[str] = []
        self.acknowledged: list[str] = []
        self.most_unacknowledged = 0

    def consume_batch(self, max_messages, timeout_ms):
        batch = super().consume_batch(max_messages, timeout_ms)
        self.consumed += [m.key for m in batch]
        self.most_unacknowledged = max(self.most_unacknowledged, len(self.consumed) - len(self.acknowledged))
        return batch

    def acknowledge(self, messages):
        with sqlite3.connect(self.database_path) as reader:  # another connection: committed rows only
            stored = {row[0] for row in reader.execute("SELECT message_id FROM prediction")}
        assert {m.key for m in messages} <= stored, "acknowledged before the rows were committed"
        self.acknowledged += [m.key for m in messages]
        super().acknowledge(messages)


def test_batches_are_acknowledged_in_order_after_commit_from_every_source(tmp_path, classifier):
    model, _ = classifier
    path = tmp_path / "r.sqlite"
    database = results_db.connect(results_db.sqlite_url(path))
    sources = []
    for topic, count in (("a", 45), ("b", 12)):
        with open_transport("local", root=tmp_path, topic=topic) as producer:
            producer.publish([encode_image(np.full((8, 8), i, np.uint8), f"{topic}{i}") for i in range(count)])
            producer.flush(5)
        sources.append(_WatchedQueue(tmp_path, topic, database_path=path))

    report = run_predictions(sources, model, database, batch_size=8, timeout_ms=50)

    a, b = sources
    assert a.acknowledged == [f"a{i}" for i in range(45)] and b.acknowledged == [f"b{i}" for i in range(12)]
    assert a.lag() == b.lag() == 0
    # The model runs one batch ahead of the database: never more than two batches unacknowledged.
    assert max(a.most_unacknowledged, b.most_unacknowledged) <= 2 * 8
    assert report.consumed == report.predicted == results_db.Prediction.select().count() == 57
    assert report.per_source == {"local": 57}


def _blank_stream(tmp_path, count: int):
    """``count`` blank images x0, x1, ... on local topic "t"; returns a fresh results database."""
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(np.zeros((8, 8), np.uint8), f"x{i}") for i in range(count)])
        producer.flush(5)
    return results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))


def test_a_failure_releases_every_batch_in_flight(tmp_path, classifier):
    model, _ = classifier
    database = _blank_stream(tmp_path, 30)

    class FailsThirdWrite(LocalTransport):
        acks = 0

        def acknowledge(self, messages):
            self.acks += 1
            if self.acks == 3:
                raise TransportError("local", "commit refused")
            super().acknowledge(messages)

    with FailsThirdWrite(tmp_path, "t") as source:
        with pytest.raises(TransportError, match="commit refused"):
            run_predictions([source], model, database, batch_size=5, timeout_ms=50)
        assert source.lag() == 20  # two batches acknowledged; the rest comes again
    with open_transport("local", root=tmp_path, topic="t") as source:
        again = run_predictions([source], model, database, batch_size=5, timeout_ms=50)
    assert again.consumed == 20 and again.predicted == 15 and again.already_predicted == 5
    assert results_db.Prediction.select().count() == 30


def test_the_first_error_is_reported_even_when_releasing_fails(tmp_path, classifier):
    model, _ = classifier
    database = _blank_stream(tmp_path, 12)

    class Broken(LocalTransport):
        def acknowledge(self, messages):
            raise TransportError("local", "commit refused")

        def release(self, messages):
            raise TransportError("local", "release refused too")

    with Broken(tmp_path, "t") as source:
        with pytest.raises(TransportError, match="commit refused"):
            run_predictions([source], model, database, batch_size=5, timeout_ms=50)


def test_the_garbage_collector_runs_less_often_during_a_run_and_as_before_after_it(tmp_path, classifier):
    model, _ = classifier
    database = _blank_stream(tmp_path, 12)
    seen = []

    class Watched(LocalTransport):
        fail = False

        def consume_batch(self, max_messages, timeout_ms):
            seen.append(gc.get_threshold())
            return super().consume_batch(max_messages, timeout_ms)

        def acknowledge(self, messages):
            if self.fail:
                raise TransportError("local", "commit refused")
            super().acknowledge(messages)

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with Watched(tmp_path, "t") as source:
            run_predictions([source], model, database, batch_size=10, timeout_ms=50)
        assert set(seen) == {(predict.YOUNG_OBJECTS_PER_MESSAGE * 10, 10, 10)}
        assert gc.get_threshold() == (700, 10, 10)

        seen.clear()
        database = _blank_stream(tmp_path / "failing", 12)
        source = Watched(tmp_path / "failing", "t")
        source.fail = True
        with source, pytest.raises(TransportError, match="commit refused"):
            run_predictions([source], model, database, batch_size=10, timeout_ms=50)
        assert seen and gc.get_threshold() == (700, 10, 10)  # put back after a failure too

        for setting in ((0, 10, 10), (10**6, 10, 10)):  # collection off, or already rarer: untouched
            gc.set_threshold(*setting)
            seen.clear()
            database = _blank_stream(tmp_path / str(setting[0]), 12)
            with Watched(tmp_path / str(setting[0]), "t") as source:
                run_predictions([source], model, database, batch_size=10, timeout_ms=50)
            assert set(seen) == {setting} and gc.get_threshold() == setting
    finally:
        gc.set_threshold(*before)


class _Garbage:
    """Payload-sized objects left in reference cycles, as kafka-python leaves its fetch responses,
    each remembered by a weak reference with its size."""

    def __init__(self) -> None:
        self._made: list[tuple[weakref.ref, int]] = []

    def leave(self, payloads: list) -> None:
        holder = _Cycle()
        holder.self, holder.payloads = holder, payloads
        self._made.append((weakref.ref(holder), sum(map(len, payloads))))

    def alive_bytes(self) -> int:
        return sum(size for ref, size in self._made if ref() is not None)


class _Cycle:
    pass


@contextlib.contextmanager
def _collector_off():
    """No collection by object count, and the session's own objects (TensorFlow's, once loaded)
    out of every explicit one: only the byte budget collects here, and cheaply."""
    enabled = gc.isenabled()
    gc.disable()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def test_cyclic_garbage_holding_payloads_is_collected_every_byte_budget(tmp_path, classifier):
    """A transport that leaves each delivery's bytes in a reference cycle (as kafka-python does
    with its fetch responses) keeps at most about one budget's worth of them alive, even when
    the collector never runs by object count (here: switched off)."""
    model, _ = classifier
    with open_transport("local", root=tmp_path, topic="t") as producer:
        noise = np.random.default_rng(0).integers(0, 256, (320, 320), dtype=np.uint8)  # ~100 KB as PNG
        producer.publish([encode_image(noise, f"x{i}") for i in range(40)])
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    garbage = _Garbage()
    most_alive = largest = 0

    class Leaky(LocalTransport):
        def consume_batch(self, max_messages, timeout_ms):
            nonlocal most_alive, largest
            delivered = super().consume_batch(max_messages, timeout_ms)
            garbage.leave([m.payload for m in delivered])
            largest = max(largest, sum(len(m.payload) for m in delivered))
            most_alive = max(most_alive, garbage.alive_bytes())
            return delivered

    with _collector_off(), Leaky(tmp_path, "t") as source:
        report = run_predictions([source], model, database, batch_size=2, timeout_ms=50,
                                 max_batch_bytes=450_000)  # 4 messages of 100 KB
    assert report.predicted == 40
    # Collected once 450 KB have been consumed: what is alive is at most that, plus the delivery
    # that passes it (and nothing would be collected without the budget: 4 MB stay alive).
    assert 0 < largest and most_alive <= 450_000 + largest, (most_alive, largest)


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 5000), sizes=st.lists(st.integers(0, 3000), max_size=40))
def test_garbage_alive_never_exceeds_the_budget_plus_one_delivery(budget, sizes):
    from vectorai.transports.base import ReceivedMessage

    collector = CollectEveryBudget(budget)
    garbage = _Garbage()
    with _collector_off():
        for size in sizes:
            payload = bytes(size)
            garbage.leave([payload])
            collector.consumed([ReceivedMessage(source="t", payload=payload, position="0", attributes={})])
            assert garbage.alive_bytes() < budget + max(sizes)


def test_database_failure_leaves_batch_unacknowledged(tmp_path, classifier):
    model, _ = classifier
    database = _blank_stream(tmp_path, 5)
    results_db.Prediction.drop_table()  # the database breaks under the running task
    with open_transport("local", root=tmp_path, topic="t") as source:
        with pytest.raises(DatabaseError, match="r.sqlite"):
            run_predictions([source], model, database, batch_size=10, timeout_ms=50)
        assert source.lag() == 5


class _CountingClassifier:
    """The real classifier, recording how many images each session call classified and whether
    on the loop's thread; optionally failing on one call."""

    def __init__(self, model, fail_on_call: int | None = None, pause_s: float = 0.0) -> None:
        self._model = model
        self.class_names, self.spec, self.info = model.class_names, model.spec, model.info
        self.preprocess, self.preprocessing, self.decode_spec = model.preprocess, model.preprocessing, model.decode_spec
        self.calls: list[tuple[str, int]] = []
        self.fail_on_call = fail_on_call
        self.pause_s = pause_s
        self._lock = threading.Lock()

    def predict_proba(self, batch):
        with self._lock:
            self.calls.append((threading.current_thread() is threading.main_thread(), len(batch)))
            number = len(self.calls)
        if number == self.fail_on_call:
            raise ModelError("tiny.onnx", "out of memory in call %d" % number)
        time.sleep(self.pause_s)  # a model slower than the loop: the loop's thread should help
        return self._model.predict_proba(batch)


def test_batches_are_split_into_chunks_that_the_waiting_loop_helps_classify(tmp_path, classifier, monkeypatch):
    model, weights = classifier
    monkeypatch.setattr(concurrency, "CHUNK", 4)
    images = np.random.default_rng(5).integers(0, 256, (90, 8, 8), dtype=np.uint8)
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([encode_image(im, f"m{i:02d}") for i, im in enumerate(images)])
        producer.flush(5)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    counting = _CountingClassifier(model, pause_s=0.01)
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], counting, database, batch_size=30, timeout_ms=50)
        assert source.lag() == 0

    # Every image classified exactly once, in calls of at most CHUNK images, by both threads.
    assert sum(size for _, size in counting.calls) == 90 and max(size for _, size in counting.calls) == 4
    assert {on_loop_thread for on_loop_thread, _ in counting.calls} == {True, False}
    want = expected_classes(weights, preprocess_images(images, model.spec))
    stored = {r.message_id: r.predicted_class for r in results_db.Prediction.select()}
    assert stored == {f"m{i:02d}": int(c) for i, c in enumerate(want)}
    assert report.predicted == 90


@pytest.mark.parametrize("failing_call", [1, 6, 9])
def test_a_model_failure_in_any_chunk_fails_the_run_and_loses_nothing(tmp_path, classifier, monkeypatch,
                                                                      failing_call):
    model, _ = classifier
    monkeypatch.setattr(concurrency, "CHUNK", 4)
    database = _blank_stream(tmp_path, 40)
    counting = _CountingClassifier(model, fail_on_call=failing_call)
    with open_transport("local", root=tmp_path, topic="t") as source:
        with pytest.raises(ModelError, match=f"out of memory in call {failing_call}"):
            run_predictions([source], counting, database, batch_size=10, timeout_ms=50)
        committed = results_db.Prediction.select().count()
        assert source.lag() == 40 - committed  # whatever was not committed comes again
    with open_transport("local", root=tmp_path, topic="t") as source:
        again = run_predictions([source], model, database, batch_size=10, timeout_ms=50)
    assert again.predicted == 40 - committed and results_db.Prediction.select().count() == 40


def test_model_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="missing.onnx: file not found"):
        OnnxClassifier(tmp_path / "missing.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelError, match="corrupt.onnx: cannot load"):
        OnnxClassifier(tmp_path / "corrupt.onnx")
    tiny_onnx_model(tmp_path / "ok.onnx")
    with pytest.raises(ModelError, match="expects 8x8x1 images but the configuration says 28x28x1"):
        OnnxClassifier(tmp_path / "ok.onnx").expect_spec(PreprocessSpec(28, 28, 1))


def test_bad_database_urls(tmp_path):
    with pytest.raises(DatabaseError, match="unsupported URL"):
        results_db.connect("mysql://u:secret@h/db")
    with pytest.raises(DatabaseError) as err:
        results_db.connect("postgresql://u:secret@127.0.0.1:1/db", connect_timeout_s=2)
    assert "secret" not in str(err.value) and "***" in str(err.value)


def test_waiting_for_the_background_chunk_the_loop_classifies_the_next_batch(classifier, monkeypatch):
    model, weights = classifier
    monkeypatch.setattr(concurrency, "CHUNK", 4)
    images = np.random.default_rng(8).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    pixels = preprocess_images(images, model.spec)
    loop_calls = threading.Semaphore(0)
    background_claimed = threading.Event()

    class HeldInBackground(_CountingClassifier):
        def predict_proba(self, batch):
            if threading.current_thread() is threading.main_thread():
                loop_calls.release()
            else:  # hold the background chunk until the loop has made three calls
                background_claimed.set()
                assert all(loop_calls.acquire(timeout=5) for _ in range(3)), "the loop idled"
            return super().predict_proba(batch)

    held = HeldInBackground(model)
    first, following = concurrency.Job(held, pixels[:8]), concurrency.Job(held, pixels[8:])
    background = threading.Thread(target=first.run_chunk, args=(False,))
    background.start()
    assert background_claimed.wait(5)  # the background thread is on the first chunk
    probabilities = first.result(spare=following)
    background.join()

    # While the background thread held its chunk, the loop took the first batch's other chunk
    # and both of the next batch's; only then did it wait.
    assert held.calls == [(True, 4), (True, 4), (True, 4), (False, 4)]
    want = expected_classes(weights, pixels)
    assert probabilities.argmax(axis=1).tolist() == want[:8].tolist()
    assert following.result().argmax(axis=1).tolist() == want[8:].tolist()


def test_uint8_chunks_classify_as_their_float_input_from_any_thread_and_reuse_its_buffer(classifier):
    model, _ = classifier
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8) for n in (7, 3, 7)]
    expected = [model.predict_proba(preprocess_images(chunk, model.spec)) for chunk in chunks]
    results: dict[str, list] = {}

    def classify(name: str) -> None:
        results[name] = [model.predict_proba(chunk) for chunk in chunks]
        results[name + " buffer"] = model._scratch.buffer

    threads = [threading.Thread(target=classify, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("a", "b"):
        for got, want in zip(results[name], expected):
            np.testing.assert_array_equal(got, want)
    # One buffer per thread, sized by the largest chunk: a smaller chunk reuses it.
    assert results["a buffer"] is not results["b buffer"] and results["a buffer"].size == 7 * 8 * 8
