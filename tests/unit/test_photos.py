"""Photos at full speed: 8-bit resizing, JPEG draft mode, and the pool that decodes batches of
large images while the model runs (order, dead letters and memory kept as without it)."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from tests.unit.helpers import expected_classes, tiny_onnx_model
from vectorai import db as results_db
from vectorai import predict
from vectorai.inference import OnnxClassifier
from vectorai.messages import decode as messages_module
from vectorai.messages import DecodeLimits, decode_messages
from vectorai.png import encode_png
from vectorai.predict import concurrency, decode_batch, run_predictions, stages
from vectorai.preprocess import PreprocessSpec, fit_jpeg, fit_uint8, preprocess_image, preprocess_images
from vectorai.transports import open_transport
from vectorai.transports.base import OutgoingMessage, ReceivedMessage
from vectorai.transports.local import LocalTransport

#: How far the 8-bit path may be from the float one, in levels of 1/255. Each of its three steps
#: rounds to whole levels where the float path does not: the colour conversion (Pillow's
#: integer BT.601 weights), the horizontal and the vertical pass of the resize (8-bit
#: fixed-point coefficients). Each rounding is at most half a level: 1.5 in all.
PARITY_LEVELS = 1.5


def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _photo(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A photo-like RGB image: smooth shapes of colour (a small random image upscaled) and grain."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    smooth = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.float32)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def _message(payload: bytes, key: str, content_type: str, position: int, **attributes: str) -> ReceivedMessage:
    return ReceivedMessage(payload=payload, attributes={"id": key, "content-type": content_type, **attributes},
                           source="local", position=str(position))


# --- resizing in 8 bits ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(image=arrays(np.uint8, st.tuples(st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 2, 3, 4]))),
       height=st.integers(1, 50), width=st.integers(1, 50), channels=st.sampled_from([1, 3]))
def test_the_8_bit_path_matches_the_float_path_within_rounding(image, height, width, channels):
    eight_bit = fit_uint8(image, height, width, channels)
    reference = preprocess_image(image, PreprocessSpec(height, width, channels))

    assert eight_bit.dtype == np.uint8 and eight_bit.shape == (height, width, channels)
    difference = np.abs(eight_bit.astype(np.float64) / 255 - reference)
    assert difference.max() * 255 <= PARITY_LEVELS


def test_a_photo_for_a_small_model_is_decoded_to_uint8_at_the_model_size():
    payload = _jpeg(_photo(0))
    spec = PreprocessSpec(224, 224, 3)
    decoded = decode_messages([_message(payload, "p", "image/jpeg", 0)], spec=spec)

    # Never a float array at full size: what waits for the model is 8-bit at its size.
    assert decoded.images[0].dtype == np.uint8 and decoded.images[0].shape == (224, 224, 3)
    with Image.open(io.BytesIO(payload)) as full:
        reference = preprocess_image(np.asarray(full), spec)
    assert np.abs(decoded.images[0] / 255 - reference).max() * 255 <= PARITY_LEVELS


# --- JPEG draft mode ------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_draft_decodes_at_a_fraction_of_the_size_only_when_switched_on(channels):
    payload = _jpeg(_photo(1))
    message = _message(payload, "p", "image/jpeg", 0)
    spec = PreprocessSpec(224, 224, channels)
    with Image.open(io.BytesIO(payload)) as full:
        full_decode = fit_uint8(np.asarray(full), 224, 224, channels)
    with Image.open(io.BytesIO(payload)) as drafted:
        drafted.draft("L" if channels == 1 else "RGB", (224, 224))
        assert drafted.size == (320, 240)  # libjpeg's 1/2 scale: 224 is at most half of 640x480
        draft_decode = fit_uint8(np.asarray(drafted), 224, 224, channels)

    off = decode_messages([message], spec=spec, jpeg_draft=False).images[0]
    on = decode_messages([message], spec=spec, jpeg_draft=True).images[0]

    np.testing.assert_array_equal(off, full_decode)
    np.testing.assert_array_equal(on, draft_decode)
    assert not np.array_equal(on, off)
    # Not the same pixels, but the same picture: on average within a couple of levels.
    assert np.abs(on.astype(np.int16) - off).mean() < 3


def test_jpeg_draft_leaves_an_image_alone_when_the_target_is_more_than_half_of_it():
    payload = _jpeg(_photo(2))
    message = _message(payload, "p", "image/jpeg", 0)
    spec = PreprocessSpec(300, 400, 3)  # more than half of 480x640: no DCT scaling applies

    on = decode_messages([message], spec=spec, jpeg_draft=True).images[0]
    off = decode_messages([message], spec=spec, jpeg_draft=False).images[0]

    np.testing.assert_array_equal(on, off)


@settings(max_examples=120, deadline=None)
@given(height=st.integers(8, 300), width=st.integers(8, 300), grey_source=st.booleans(),
       channels=st.sampled_from([1, 3]), target=st.tuples(st.integers(1, 120), st.integers(1, 120)),
       jpeg_draft=st.booleans(), quality=st.integers(30, 95), subsampling=st.sampled_from([0, 1, 2]),
       progressive=st.booleans(), seed=st.integers(0, 2**16))
def test_jpegs_decoded_without_pillow_give_pillows_pixels(height, width, grey_source, channels, target,
                                                         jpeg_draft, quality, subsampling, progressive, seed):
    """fit_jpeg (simplejpeg: the loop's path for JPEGs) against fit_uint8 on Pillow's decoding,
    draft mode on and off, every colour combination, baseline and progressive: equal pixels,
    or None exactly where it leaves the image to Pillow."""
    photo = _photo(seed, height, width)
    source = Image.fromarray(photo).convert("L") if grey_source else Image.fromarray(photo)
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=quality, progressive=progressive,
                **({} if grey_source else {"subsampling": subsampling}))
    payload = buffer.getvalue()

    fast = fit_jpeg(payload, *target, channels, jpeg_draft=jpeg_draft, max_pixels=4096 * 4096)
    with Image.open(io.BytesIO(payload)) as image:
        reference = fit_uint8(image, *target, channels, jpeg_draft=jpeg_draft)

    if channels == 1 and not grey_source and not jpeg_draft:
        assert fast is None  # Pillow converts RGB to grey itself there: left to it
    else:
        np.testing.assert_array_equal(fast, reference)


def test_jpegs_fit_jpeg_cannot_stand_in_for_go_to_pillow_with_their_reasons():
    buffer = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(buffer, format="JPEG")
    cmyk = buffer.getvalue()
    big = _jpeg(_photo(3))
    small = _jpeg(_photo(4, 120, 160))
    broken = small[: len(small) // 2]
    for payload in (cmyk, broken, b"\xff\xd8\xff not a jpeg"):
        assert fit_jpeg(payload, 32, 32, 3, jpeg_draft=True, max_pixels=4096 * 4096) is None
    assert fit_jpeg(big, 32, 32, 3, jpeg_draft=True, max_pixels=640 * 480 - 1) is None

    spec = PreprocessSpec(32, 32, 3)
    decoded = decode_messages([_message(cmyk, "cmyk", "image/jpeg", 0), _message(broken, "cut", "image/jpeg", 1),
                               _message(big, "big", "image/jpeg", 2)],
                              spec=spec, limits=DecodeLimits(max_pixels=640 * 480 - 1), jpeg_draft=True)
    assert [m.attributes["id"] for m in decoded.messages] == ["cmyk"]  # Pillow converts CMYK itself
    reasons = dict((m.attributes["id"], reason) for m, reason in decoded.failures)
    assert "cannot decode image" in reasons["cut"] and "exceed the limit" in reasons["big"]


def test_jpeg_draft_is_passed_on_by_run_predictions(tmp_path, monkeypatch):
    tiny_onnx_model(tmp_path / "tiny.onnx", height=28, width=28, channels=3)
    model = OnnxClassifier(tmp_path / "tiny.onnx")
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([OutgoingMessage(_jpeg(_photo(i)), {"id": f"p{i}", "content-type": "image/jpeg"})
                          for i in range(3)])
        producer.flush(5)
    drafted: list[bool] = []
    original = messages_module.fit_jpeg

    def watched(*args, jpeg_draft, **kwargs):
        drafted.append(jpeg_draft)
        return original(*args, jpeg_draft=jpeg_draft, **kwargs)

    monkeypatch.setattr(messages_module, "fit_jpeg", watched)
    for draft in (False, True):
        database = results_db.connect(results_db.sqlite_url(tmp_path / f"r{draft}.sqlite"))
        with open_transport("local", root=tmp_path, topic="t", group=f"g{draft}") as source:
            report = run_predictions([source], model, database, batch_size=8, timeout_ms=50, jpeg_draft=draft)
        assert report.predicted == 3
        assert drafted == [draft] * 3
        drafted.clear()


# --- the decoding pool ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    weights = tiny_onnx_model(path, height=8, width=8, channels=3)
    return OnnxClassifier(path), weights


def _big_png(seed: int) -> np.ndarray:
    """A 48x48 RGB noise image: its PNG is about 7 KiB, a message the pool decodes."""
    return np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)


_POISON = [
    (b"\x89PNG\r\n\x1a\n" + bytes(6000), "image/png"),  # large enough for the pool, and undecodable
    (b"\xff\xd8" + b"\x00" * 6000, "image/jpeg"),
    (b"\x00" * 5000, "image/gif"),
]


@st.composite
def _mixed_batches(draw):
    """Messages of a batch: large images the pool decodes, and poison at random places."""
    count = draw(st.integers(1, 40))
    kinds = draw(st.lists(st.sampled_from(["png", "jpeg", "poison0", "poison1", "poison2", "noid"]),
                          min_size=count, max_size=count))
    messages = []
    for i, kind in enumerate(kinds):
        if kind == "png":
            messages.append(_message(encode_png(_big_png(i)), f"m{i}", "image/png", i, label="1"))
        elif kind == "jpeg":
            messages.append(_message(_jpeg(_photo(i, 60, 80)), f"m{i}", "image/jpeg", i))
        elif kind == "noid":
            messages.append(ReceivedMessage(source="local", payload=encode_png(_big_png(i)),
                                            attributes={"content-type": "image/png"}, position=str(i)))
        else:
            payload, content_type = _POISON[int(kind[-1])]
            messages.append(_message(payload, f"m{i}", content_type, i))
    return messages


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=_mixed_batches(), threads=st.integers(1, 3), jpeg_draft=st.booleans())
def test_the_pool_decodes_a_batch_as_one_thread_does_in_order_with_the_dead_letters(tiny, messages, threads,
                                                                                    jpeg_draft):
    model, _ = tiny
    source = type("Source", (), {"name": "local"})()
    alone = decode_batch(source, messages, model, jpeg_draft=jpeg_draft)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        decoding = concurrency.Decoding(pool, messages, len(model.class_names), DecodeLimits(), model.spec,
                                        jpeg_draft)
        pooled = decode_batch(source, messages, model, images=decoding.result())

    assert [m.position for m in pooled.decoded] == [m.position for m in alone.decoded]
    assert pooled.labels == alone.labels
    np.testing.assert_array_equal(pooled.pixels, alone.pixels)
    assert pooled.pixels.dtype == np.uint8 or not pooled.decoded  # what waits for the model is 8-bit
    assert [(d["position"], d["reason"]) for d in pooled.dead] == [(d["position"], d["reason"]) for d in alone.dead]
    assert len(pooled.dead) + len(pooled.decoded) == len(messages)


class _WatchedQueue(LocalTransport):
    """The real local queue, noting the most messages consumed and not yet acknowledged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unacknowledged = 0
        self.most_unacknowledged = 0

    def consume_batch(self, max_messages, timeout_ms):
        batch = super().consume_batch(max_messages, timeout_ms)
        self.unacknowledged += len(batch)
        self.most_unacknowledged = max(self.most_unacknowledged, self.unacknowledged)
        return batch

    def acknowledge(self, messages):
        self.unacknowledged -= len(messages)
        super().acknowledge(messages)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 60), batch_size=st.integers(1, 16), threads=st.integers(1, 3),
       poison_every=st.integers(2, 30), small=st.booleans())
def test_a_run_with_the_pool_keeps_every_row_every_dead_letter_and_at_most_three_batches(
        tmp_path_factory, tiny, monkeypatch, count, batch_size, threads, poison_every, small):
    model, weights = tiny
    tmp_path = tmp_path_factory.mktemp("run")
    images = [_big_png(i)[:8, :8] if small else _big_png(i) for i in range(count)]
    outgoing = []
    for i, image in enumerate(images):
        if i % poison_every == poison_every - 1:
            payload = _POISON[0][0][:500] if small else _POISON[0][0]  # as small or large as the images
            outgoing.append(OutgoingMessage(payload, {"id": f"m{i:03d}", "content-type": "image/png"}))
        else:
            outgoing.append(OutgoingMessage(encode_png(image), {"id": f"m{i:03d}", "content-type": "image/png"}))
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish(outgoing)
        producer.flush(5)
    decoders: set[str] = set()
    decode = decode_messages

    def watched_decode(*args, **kwargs):
        decoders.add(threading.current_thread().name.split("_")[0])
        return decode(*args, **kwargs)

    for module in (stages, concurrency):  # the loop's thread and the pool's
        monkeypatch.setattr(module, "decode_messages", watched_decode)
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    source = _WatchedQueue(tmp_path, "t")
    try:
        report = run_predictions([source], model, database, batch_size=batch_size, timeout_ms=30,
                                 decode_threads=threads)
    finally:
        source.close()
        monkeypatch.undo()

    poison = {f"m{i:03d}" for i in range(count) if i % poison_every == poison_every - 1}
    want = expected_classes(weights, preprocess_images([im for i, im in enumerate(images)
                                                        if f"m{i:03d}" not in poison], model.spec))
    with sqlite3.connect(tmp_path / "r.sqlite") as reader:
        rows = dict(reader.execute("SELECT message_id, predicted_class FROM prediction"))
        dead = {row[0] for row in reader.execute("SELECT message_id FROM dead_letter")}
    good = [f"m{i:03d}" for i in range(count) if f"m{i:03d}" not in poison]
    assert rows == dict(zip(good, want.tolist()))
    assert dead == poison and report.dead_letters == len(poison)
    assert source.unacknowledged == 0
    # Memory: one batch decoding, one in the model, one being written; two without the pool.
    assert source.most_unacknowledged <= (2 if small else 3) * batch_size
    # Large messages are decoded by the pool (or by the loop taking its unstarted slices);
    # small ones only on the loop's thread, where a pool would only queue for the GIL.
    assert decoders <= ({"MainThread", "decode"} if not small else {"MainThread"})
    if not small and count >= 2 * batch_size and threads > 0:
        assert "decode" in decoders


def test_large_images_go_to_the_model_in_smaller_chunks():
    # The model's intermediate tensors grow with its input, and two chunks run at once.
    assert predict.chunk_images(np.zeros((256, 28, 28, 1), np.uint8)) == predict.CHUNK
    assert predict.chunk_images(np.zeros((256, 224, 224, 3), np.uint8)) == 8
    assert predict.chunk_images(np.zeros((2, 2000, 2000, 3), np.uint8)) == 1

    class Recording:
        class_names = ["a", "b"]

        def __init__(self):
            self.sizes = []

        def predict_proba(self, batch):
            self.sizes.append(len(batch))
            return np.tile([[0.25, 0.75]], (len(batch), 1)).astype(np.float32)

    model = Recording()
    job = concurrency.Job(model, np.zeros((20, 224, 224, 3), np.uint8))
    assert job.result().shape == (20, 2)
    assert sorted(model.sizes) == [4, 8, 8]


@pytest.mark.parametrize("given_threads", [None, 2])
def test_the_pool_grows_while_decoding_holds_the_model_back_unless_its_size_is_given(
        tmp_path, tiny, monkeypatch, given_threads):
    model, _ = tiny
    with open_transport("local", root=tmp_path, topic="t") as producer:
        producer.publish([OutgoingMessage(encode_png(_big_png(i)), {"id": f"m{i}", "content-type": "image/png"})
                          for i in range(288)])
        producer.flush(5)
    decode = decode_messages

    def slow_decode(*args, **kwargs):
        time.sleep(0.05)  # decoding far slower than this model: the model waits for it
        return decode(*args, **kwargs)

    for module in (stages, concurrency):
        monkeypatch.setattr(module, "decode_messages", slow_decode)
    monkeypatch.setattr(concurrency, "available_cores", lambda: 4)
    monkeypatch.setattr(model, "threads", 3)  # onnxruntime on 3 of the 4 cores: one decoding thread to start
    database = results_db.connect(results_db.sqlite_url(tmp_path / "r.sqlite"))
    with open_transport("local", root=tmp_path, topic="t") as source:
        report = run_predictions([source], model, database, batch_size=48, timeout_ms=30,
                                 decode_threads=given_threads)

    assert report.predicted == 288
    # Given: as given. Else from one, one more each time the model waited, up to one per core.
    if given_threads:
        assert report.decode_threads == given_threads
    else:
        assert 1 < report.decode_threads <= 4
