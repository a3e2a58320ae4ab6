import datetime as dt

import numpy as np
import pytest

from vectorai.errors import MessageDecodeError
from vectorai.messages import DecodeLimits, decode_message, decode_messages, encode_image
from vectorai.png import inflate_png
from vectorai.transports.base import ReceivedMessage


def received(outgoing, source="local"):
    return ReceivedMessage(source=source, payload=outgoing.payload, attributes=dict(outgoing.attributes),
                           position="t@1")


@pytest.mark.parametrize("encoding", ["png", "raw"])
@pytest.mark.parametrize("shape", [(28, 28), (32, 24, 3)])
def test_round_trip_is_lossless_for_grey_and_colour(encoding, shape):
    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    stamp = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.timezone.utc)
    decoded = decode_message(received(encode_image(image, "ds-1", label=7, encoding=encoding, produced_at=stamp)),
                             num_classes=10)
    assert decoded.key == "ds-1"
    assert decoded.label == 7
    assert decoded.produced_at == stamp
    np.testing.assert_array_equal(decoded.image, image)


def test_raw_float_round_trip_keeps_values():
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    decoded = decode_message(received(encode_image(image, "f", encoding="raw")))
    assert decoded.image.dtype == np.float32
    np.testing.assert_array_equal(decoded.image, image)


def test_jpeg_round_trip_is_close():
    image = np.full((16, 16, 3), 120, dtype=np.uint8)
    decoded = decode_message(received(encode_image(image, "j", encoding="jpeg")))
    assert decoded.image.shape == (16, 16, 3)
    assert np.abs(decoded.image.astype(int) - 120).max() <= 3


@pytest.mark.parametrize("layout", [
    {"content-type": "application/x-ndarray; dtype=uint8; shape=3,4"},
    {"content-type": "application/x-ndarray;dtype=uint8;shape=3,4"},
    {"content-type": "application/x-ndarray", "dtype": "uint8", "shape": "3,4"},  # the format's first version
])
def test_hand_written_message_in_documented_format_decodes(layout):
    """What a producer in another language would send: raw bytes plus string attributes."""
    pixels = bytes(range(256))[:12]
    message = ReceivedMessage("kafka", pixels, {"id": "ext-1", **layout, "label": "2",
                                                "produced-at": "2026-11-26T07:00:00+01:00"}, "p")
    decoded = decode_message(message, num_classes=3)
    assert decoded.image.shape == (3, 4) and decoded.image[2, 3] == 11
    assert decoded.produced_at == dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.timezone.utc)


def test_raw_images_are_sent_with_dtype_and_shape_in_the_content_type():
    colour = encode_image(np.zeros((4, 5, 3), np.uint8), "c", label=1, encoding="raw")
    grey = encode_image(np.zeros((4, 5), np.float32), "g", encoding="raw")
    assert colour.attributes["content-type"] == "application/x-ndarray; dtype=uint8; shape=4,5,3"
    assert grey.attributes["content-type"] == "application/x-ndarray; dtype=float32; shape=4,5"
    assert set(colour.attributes) == {"id", "produced-at", "label", "content-type"}


def good_attrs(**over):
    attrs = {"id": "m1", "content-type": "application/x-ndarray", "dtype": "uint8", "shape": "2,2"}
    attrs.update(over)
    return {k: v for k, v in attrs.items() if v is not None}


@pytest.mark.parametrize("payload,attrs,reason", [
    (b"\x00" * 4, good_attrs(id=None), "missing 'id'"),
    (b"\x00" * 4, good_attrs(id="a\x00b"), "NUL character"),
    (b"", good_attrs(), "empty payload"),
    (b"\x00" * 4, good_attrs(**{"content-type": "text/plain"}), "unknown content-type"),
    (b"\x00" * 5, good_attrs(), "needs 4 bytes"),
    (b"\x00" * 4, good_attrs(shape="2,x"), "malformed shape"),
    (b"\x00" * 4, good_attrs(shape="2,2,7"), "unsupported shape"),
    (b"\x00" * 4, good_attrs(shape="0" * 100 + "2,2"), "malformed dtype or shape"),
    (b"\x00" * 4, good_attrs(dtype="float64"), "unsupported dtype"),
    (b"\x00" * 4, good_attrs(**{"content-type": "application/x-ndarray; dtype=uint8; shape=2,3"}),
     "says shape=2,3 but the shape attribute says '2,2'"),
    (b"\x00" * 4, good_attrs(**{"content-type": "application/x-ndarray; order=F"}), "unknown parameter 'order'"),
    (b"\x00" * 4, good_attrs(**{"content-type": "application/x-ndarray; shape=" + "2," * 30 + "2"}),
     "longer than 64 characters"),
    (b"\x00" * 4, {"id": "m1", "content-type": "application/x-ndarray; dtype=uint8"}, "malformed shape ''"),
    (b"\x00" * 4, {"id": "m1", "content-type": "application/x-ndarrays; dtype=uint8; shape=2,2"},
     "unknown content-type"),
    (np.array([np.nan, 0, 0, 0], dtype="<f4").tobytes(), good_attrs(dtype="float32"), "NaN"),
    (b"\x00" * 4, good_attrs(label="12"), "outside the model's 10 classes"),
    (b"\x00" * 4, good_attrs(label="cat"), "not an integer"),
    (b"\x00" * 4, good_attrs(**{"produced-at": "yesterday"}), "not an ISO 8601"),
    (b"not a png at all", good_attrs(**{"content-type": "image/png"}), "cannot decode image"),
])
def test_poison_messages_raise_a_clear_reason(payload, attrs, reason):
    with pytest.raises(MessageDecodeError) as err:
        decode_message(ReceivedMessage("kafka", payload, attrs, "t/0@5"), num_classes=10)
    assert reason in str(err.value)
    assert err.value.source == "kafka"


def test_size_limits_are_checked_before_decoding():
    big = encode_image(np.zeros((100, 100), dtype=np.uint8), "big")
    with pytest.raises(MessageDecodeError, match="pixels exceed"):
        decode_message(received(big), limits=DecodeLimits(max_pixels=50 * 50))
    with pytest.raises(MessageDecodeError, match="exceeds the limit"):
        decode_message(received(big), limits=DecodeLimits(max_bytes=10))
    claimed = ReceivedMessage("x", b"\x00" * 4, good_attrs(shape="100000,100000"), "p")
    with pytest.raises(MessageDecodeError, match="pixels exceed"):
        decode_message(claimed)
    # A layout already seen (and accepted) under other limits is checked against these ones.
    raw = received(encode_image(np.zeros((28, 28), dtype=np.uint8), "raw", encoding="raw"))
    assert decode_message(raw).image.shape == (28, 28)
    with pytest.raises(MessageDecodeError, match="784 pixels exceed the limit of 100"):
        decode_message(raw, limits=DecodeLimits(max_pixels=100))


def _messages(images, encoding, start=0):
    return [received(encode_image(image, f"m{start + i}", label=i % 10, encoding=encoding))
            for i, image in enumerate(images)]


@pytest.mark.parametrize("encoding,shape", [("png", (28, 28)), ("png", (9, 7, 3)), ("raw", (28, 28)),
                                            ("raw", (6, 5, 4))])
def test_a_uniform_batch_decodes_into_one_array_equal_to_each_message(encoding, shape):
    """One producer's batch becomes one array; every image in it is exactly the one sent, and
    exactly what decode_message makes of its message alone."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(5)]
    # Flat and ramped images too, so that PNG's None, Sub and Up filters all occur in the batch.
    images.append(np.full(shape, 9, np.uint8))
    images.append(np.broadcast_to(np.arange(shape[1], dtype=np.uint8).reshape((1, -1) + (1,) * (len(shape) - 2)),
                                  shape).copy())
    images.append(np.broadcast_to(np.arange(shape[0], dtype=np.uint8).reshape((-1,) + (1,) * (len(shape) - 1)),
                                  shape).copy())
    messages = _messages(images, encoding)
    if encoding == "png":
        assert {inflate_png(m.payload, 1 << 20).kind for m in messages} == {0, 1, 2}  # None, Sub, Up
    batch = decode_messages(messages, num_classes=10)
    assert isinstance(batch.images, np.ndarray) and batch.images.dtype == np.uint8
    assert len(batch.images) == len(images) and not batch.failures
    for sent, got, message in zip(images, batch.images, messages):
        np.testing.assert_array_equal(got.reshape(sent.shape), sent)
        np.testing.assert_array_equal(decode_message(message).image, sent)
    assert batch.labels == [i % 10 for i in range(len(images))]
    assert batch.messages == messages


def test_a_mixed_batch_keeps_each_image_and_reports_each_failure():
    """Sizes and encodings that differ give one image each; a bad message is a failure with its
    reason, in the batch's order, and the messages around it still decode."""
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    colour = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    floats = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    bad = ReceivedMessage("local", b"\x00" * 3, good_attrs(), "t@9")
    messages = [received(encode_image(grey, "a")), bad, received(encode_image(colour, "b", encoding="raw")),
                received(encode_image(floats, "c", encoding="raw")), received(encode_image(colour, "d"))]
    batch = decode_messages(messages)
    assert [m.key for m in batch.messages] == ["a", "b", "c", "d"]
    assert [(m.position, reason) for m, reason in batch.failures] == [("t@9", "shape (2, 2) of uint8 needs 4 bytes but payload has 3")]
    assert isinstance(batch.images, list)
    for got, sent in zip(batch.images, (grey, colour, floats, colour)):
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)
