import datetime as dt

import numpy as np
import pytest

from vectorai.errors import MessageDecodeError
from vectorai.messages import DecodeLimits, decode_message, encode_image
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


def test_hand_written_message_in_documented_format_decodes():
    """What a producer in another language would send: raw bytes plus string attributes."""
    pixels = bytes(range(256))[:12]
    message = ReceivedMessage("kafka", pixels, {"id": "ext-1", "content-type": "application/x-ndarray",
                                                "dtype": "uint8", "shape": "3,4", "label": "2",
                                                "produced-at": "2026-11-26T07:00:00+01:00"}, "p")
    decoded = decode_message(message, num_classes=3)
    assert decoded.image.shape == (3, 4) and decoded.image[2, 3] == 11
    assert decoded.produced_at == dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.timezone.utc)


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
    (b"\x00" * 4, good_attrs(dtype="float64"), "unsupported dtype"),
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
