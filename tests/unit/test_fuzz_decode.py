"""Fuzzing the whole per-batch path before the model: decode, check, preprocess, the rows built
from the model's output, and their storage in SQLite.

Property, for any batch of messages: every message ends as a row whose pixels are the model's
shape (uint8, or float32 with finite values in [0, 1]), as a duplicate of an earlier id, or as a dead letter with a
reason; nothing raises, and no message takes long. Payloads are mutated real PNG and JPEG files
(scikit-learn's digits, our encoder's and Pillow's PNGs) and raw pixels; attributes are drawn
from the documented format and from anything else (lone surrogates, NUL, non-strings, huge
values, arrays and objects nested up to 5,000 deep, timestamps at the ends of the calendar,
random content-type parameters).

``make test`` runs a fixed budget (FUZZ_EXAMPLES, default 2,000 batches drawn the same way every
time, under a minute); ``make fuzz`` draws new ones (FUZZ_RANDOM=1), many more.
A failure prints the smallest batch that breaks the property:
add it as an ``@example`` below (or a test in test_isolation.py) before fixing it.
"""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import time
import zlib
from functools import lru_cache

import numpy as np
import peewee as pw
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.helpers import cached_tiny_classifier
from vectorai import db as results_db
from vectorai.inference import OnnxClassifier
from vectorai.messages import JPEG, MAX_REASON, NDARRAY, PNG, encode_image
from vectorai.predict import decode_batch, label_batch
from vectorai.transports.base import ReceivedMessage
from vectorai.png import SIGNATURE, encode_png

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
#: No message may take longer than this to decode (the largest here are a few hundred KiB).
SECONDS_PER_MESSAGE = 2.0


class _Source:
    name = "fuzz"


def _classifier() -> OnnxClassifier:
    return cached_tiny_classifier(28, 28, 1, 10)


@lru_cache(maxsize=1)
def _corpus() -> dict[str, list[bytes]]:
    """Real files to mutate: digits as our encoder and Pillow write them, and as JPEGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:6] * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    pngs, jpegs = [], []
    for image in [*digits, big, np.kron(digits[0], np.ones((4, 4), np.uint8))]:
        pngs.append(encode_png(image))
        for mode in ("L", "RGB", "RGBA", "P", "I;16", "1", "LA"):
            buffer = io.BytesIO()
            Image.fromarray(image).convert(mode).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        for mode in ("L", "RGB", "CMYK"):
            buffer = io.BytesIO()
            Image.fromarray(image).convert(mode).save(buffer, format="JPEG", quality=80)
            jpegs.append(buffer.getvalue())
    raws = [image.tobytes() for image in digits] + [np.linspace(0, 1, 784, dtype="<f4").tobytes()]
    return {"png": pngs, "jpeg": jpegs, "raw": raws}


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], len(SIGNATURE)
    while pos + 8 <= len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        chunks.append((kind, png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


_CHUNK_TYPES = st.one_of(st.sampled_from([b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"iCCP", b"tEXt",
                                          b"zTXt", b"iTXt", b"pHYs", b"sRGB", b"acTL", b"fcTL", b"fdAT", b"eXIf"]),
                         st.binary(min_size=4, max_size=4))


@st.composite
def mutated_png(draw) -> bytes:
    """A real PNG changed chunk by chunk, CRCs made right again (mostly), so that decoders get
    past the checksums into the chunks' meaning: IDAT split at random, chunk types replaced by
    any four bytes, IHDR fields changed, chunks dropped, repeated or added."""
    chunks = _png_chunks(draw(st.sampled_from(_corpus()["png"])))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(chunks) - 1))
        kind, data = chunks[i]
        action = draw(st.integers(0, 5))
        if action == 0 and len(data) > 1:  # split into two chunks, the second of any type
            at = draw(st.integers(1, len(data) - 1))
            chunks[i:i + 1] = [(kind, data[:at]), (draw(_CHUNK_TYPES), data[at:])]
        elif action == 1:
            chunks[i] = (draw(_CHUNK_TYPES), data)
        elif action == 2 and data:
            mutable = bytearray(data)
            mutable[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            chunks[i] = (kind, bytes(mutable))
        elif action == 3 and len(chunks) > 1:
            del chunks[i]
        elif action == 4:
            chunks.insert(i, (draw(_CHUNK_TYPES), draw(st.binary(max_size=64))))
        else:
            chunks.insert(i, chunks[i])
    good_crc = draw(st.integers(0, 9)) > 0
    return SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) if good_crc else draw(st.integers(0, 2**32 - 1)))
        for kind, data in chunks)


@st.composite
def payloads(draw) -> tuple[str, bytes]:
    """(kind, bytes): a mutated real file of that kind, or random bytes."""
    kind = draw(st.sampled_from(["png", "png-chunks", "jpeg", "raw", "random"]))
    if kind == "random":
        return kind, draw(st.binary(max_size=2048))
    if kind == "png-chunks":
        return "png", draw(mutated_png())
    data = bytearray(draw(st.sampled_from(_corpus()[kind])))
    for _ in range(draw(st.integers(0, 6))):  # flip bytes, headers and chunk lengths included
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return kind, bytes(data)


_SHAPES = st.lists(st.integers(-2, 70), min_size=0, max_size=4).map(lambda dims: ",".join(map(str, dims)))
_DTYPES = st.sampled_from(["uint8", "float32", "float64", "int8", "", "uint8 ", "UINT8"])
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)


@st.composite
def content_types(draw) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.sampled_from([PNG, JPEG, NDARRAY, "image/gif", ""]))
    if choice == 1:
        params = draw(st.lists(st.tuples(st.sampled_from(["dtype", "shape", "order", "DTYPE", ""]),
                                         st.one_of(_DTYPES, _SHAPES, _ANY_TEXT)), max_size=4))
        return NDARRAY + "".join(f"; {name}={value}" for name, value in params)
    if choice == 2:
        return f"{NDARRAY}; dtype={draw(_DTYPES)}; shape={draw(_SHAPES)}"
    return draw(_ANY_TEXT)


_IDS = st.one_of(
    st.text(max_size=20), _ANY_TEXT, st.text(min_size=250, max_size=260),
    st.sampled_from(["a\x00b", "lone-\udc80", "\ud800", "", "1", "None"]),
    st.none(), st.integers(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=2),
)
_STAMPS = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-13-01T00:00:00Z", "Z",
                     "0001-01-01T00:00:00-23:59", "9999-12-31T23:59:59.999999+00:00"]),
    _ANY_TEXT,
)
_LABELS = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", " 3", "٣", "1e2", "9" * 5000]), _ANY_TEXT)


#: Nesting depths on either side of the bound and of Python's recursion limit (about 1,000):
#: at 500 levels json.loads succeeded but writing the dead letter back recursed too deep.
DEPTHS = st.one_of(st.integers(1, 40), st.sampled_from([500, 1000, 1100, 5000]))


def nest(depth: int, kinds: str) -> object:
    """A value ``depth`` arrays or objects deep ("[" or "{" per level, taken from ``kinds`` in
    turn), built without recursion."""
    value: object = "bottom"
    for level in range(depth):
        value = [value] if kinds[level % len(kinds)] == "[" else {"k": value}
    return value


@st.composite
def deeply_nested(draw) -> object:
    """Arrays and objects nested at any depth, as a local queue's JSON may hold them."""
    return nest(draw(DEPTHS), draw(st.sampled_from(["[", "{", "[{"])))


@st.composite
def messages(draw, index: int) -> ReceivedMessage:
    kind, payload = draw(payloads())
    # Mostly the content-type that fits the bytes, so that the decoders get past choosing one.
    fitting = {"png": st.just(PNG), "jpeg": st.just(JPEG),
               "raw": st.builds(lambda dims: f"{NDARRAY}; dtype=uint8; shape={dims}", _SHAPES)}.get(kind)
    content_type = draw(fitting if fitting is not None and draw(st.integers(0, 3)) else content_types())
    attributes: dict[str, object] = {"id": draw(_IDS), "content-type": content_type}
    for name, values in (("label", _LABELS), ("produced-at", _STAMPS), ("dtype", _DTYPES), ("shape", _SHAPES)):
        if draw(st.booleans()):
            attributes[name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        attributes[draw(_ANY_TEXT)] = draw(st.one_of(_ANY_TEXT, st.none(), st.integers(), deeply_nested()))
    if draw(st.integers(0, 9)) == 0:
        del attributes["id"]
    return ReceivedMessage("fuzz", payload, attributes, f"fuzz@{index}")


@st.composite
def batches(draw) -> list[ReceivedMessage]:
    good = [encode_image(image, f"good-{i}", label=i) for i, image in enumerate(_digits28())]
    batch = [draw(messages(i)) for i in range(draw(st.integers(1, 8)))]
    # Good messages among the poison, as in a real stream.
    for message in draw(st.lists(st.sampled_from(good), max_size=3)):
        at = draw(st.integers(0, len(batch)))
        batch.insert(at, ReceivedMessage("fuzz", message.payload, dict(message.attributes), f"good@{at}"))
    return batch


@lru_cache(maxsize=1)
def _digits28() -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    return [np.kron((d * (255 / 16)).astype(np.uint8), np.ones((4, 4), np.uint8))[2:30, 2:30]
            for d in load_digits().images[:3]]


@pytest.fixture(scope="module", autouse=True)
def _warm_corpus() -> None:
    # Built before Hypothesis draws anything: scikit-learn's import uses the random module,
    # which Hypothesis flags inside a strategy.
    _corpus()
    _digits28()
    _classifier()


@pytest.fixture(scope="module")
def database():
    db = results_db.connect("sqlite:///:memory:")
    yield db
    db.close()


def check_batch(batch: list[ReceivedMessage], database: pw.Database) -> None:
    classifier = _classifier()
    started = time.perf_counter()
    decoded = decode_batch(_Source(), batch, classifier)
    seconds = time.perf_counter() - started
    assert seconds < SECONDS_PER_MESSAGE * len(batch), f"{seconds:.1f} s for {len(batch)} messages"

    n = len(decoded.decoded)
    assert n + decoded.duplicates + len(decoded.dead) == len(batch)
    if n:
        assert decoded.pixels.shape == (n, 28, 28, 1)
        # uint8 when every image came at the model's size in 8 bits (the model scales them a
        # chunk at a time), else float32 in [0, 1].
        assert decoded.pixels.dtype in (np.uint8, np.float32)
        if decoded.pixels.dtype == np.float32:
            assert np.isfinite(decoded.pixels).all()
            assert decoded.pixels.min() >= 0.0 and decoded.pixels.max() <= 1.0
    for dead in decoded.dead:
        assert 0 < len(dead["reason"]) <= MAX_REASON and "\x00" not in dead["reason"]
        dead["reason"].encode("utf-8")  # storable as text, as is everything below
    # What the loop does next, on made-up model output: rows built and stored, never an error.
    probabilities = np.full((n, 10), 0.1, dtype=np.float32)
    classified = label_batch(decoded, probabilities, classifier)
    with database.atomic() as transaction:
        results_db.write_results(database, classified.rows, classified.dead)
        stored = results_db.Prediction.select().count()
        assert stored == len({row["message_id"] for row in classified.rows})
        transaction.rollback()  # each example starts from an empty table


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batch=batches())
# Crashes this fuzzing found, kept as regressions (each also has a test in test_isolation.py):
@example(batch=[ReceivedMessage("fuzz", encode_image(np.zeros((8, 8), np.uint8), "x").payload,
                                {"id": "x", "content-type": PNG, "produced-at": "0001-01-01T00:00:00+01:00"},
                                "fuzz@0")])
def test_every_message_is_a_row_a_duplicate_or_a_dead_letter_and_nothing_raises(batch, database):
    check_batch(batch, database)


def test_the_corpus_is_real_and_decodes_before_mutation(database):
    """The fuzzing starts from files that decode: a mutation is what breaks them, not the corpus."""
    corpus = _corpus()
    batch = [ReceivedMessage("fuzz", payload, {"id": f"c{i}", "content-type": PNG if kind == "png" else JPEG},
                             f"c@{i}")
             for i, (kind, payload) in enumerate((k, p) for k in ("png", "jpeg") for p in corpus[k])]
    decoded = decode_batch(_Source(), batch, _classifier())
    assert not decoded.dead, decoded.dead[0]["reason"] if decoded.dead else ""
    assert len(decoded.decoded) == len(batch)
    check_batch(batch, database)
    assert sqlite3.sqlite_version  # the in-memory database is SQLite, as the embedded default
