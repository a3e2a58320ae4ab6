"""Peak memory of the predict path (local queue + SQLite), each figure from a fresh process: one
batch of digits and ten, a batch of huge PNGs, and 8 MiB PNGs under the default byte budget."""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.backends import publish
from benchmarks.workers import run_worker

#: The hostile batch of the memory section: this many pixels a side, RGBA, all zero.
LARGE_SIDE = 4096
LARGE_BUDGET_MIB = 1024
#: The byte-budget case of the memory section: this many noise PNGs of just under 8 MiB each
#: ([stream] max_message_bytes), through PredictTask's defaults (max_batch_bytes 64 MiB).
BYTES_COUNT, BYTES_SIDE = 64, 2890
BYTES_BUDGET_MIB = 600


def measure_all(model_dir: Path, workdir: Path, images: np.ndarray, labels: np.ndarray, encoding: str,
                batch_size: int, threads: int | None, tiny: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The memory section of the digits run: 1x and 10x one batch of messages, then the large
    PNGs and the 8 MiB ones (4 of each with ``tiny``)."""
    memory = measure_memory(model_dir, workdir, images, labels, batch_size, encoding, (1, 10), threads)
    log("peak memory: " + ", ".join(f"{r['messages']} messages {r['peak_rss_mib']} MiB" for r in memory["runs"]))
    memory["large"] = measure_large_images(model_dir / "model.onnx", workdir, 4 if tiny else batch_size,
                                           batch_size, threads)
    log(f"peak memory, {memory['large']['messages']} {LARGE_SIDE}x{LARGE_SIDE} PNGs: "
        f"{memory['large']['peak_rss_mib']} MiB")
    memory["bytes"] = measure_byte_budget(model_dir / "model.onnx", workdir, 4 if tiny else BYTES_COUNT, threads)
    log(f"peak memory, {memory['bytes']['messages']} PNGs of 8 MiB: {memory['bytes']['peak_rss_mib']} MiB")
    return memory


def _drain_in_worker(model_file: Path, workdir: Path, topic: str, batch_size: int,
                     threads: int | None) -> dict[str, Any]:
    """A fresh process drains ``topic`` of the local queue under ``workdir`` into its own SQLite."""
    return run_worker(["memory", "--model", str(model_file), "--queue-root", str(workdir / "queues"),
                       "--topic", topic, "--database", str(workdir / f"{topic}.sqlite"),
                       "--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else []))


def measure_memory(model_path: Path, workdir: Path, images: np.ndarray, labels: np.ndarray, batch_size: int,
                   encoding: str, multiples: tuple[int, ...], threads: int | None) -> dict[str, Any]:
    """Peak RSS of the predict path (local queue + SQLite) in a fresh process per stream size."""
    from vectorai.transports import open_transport

    result: dict[str, Any] = {"transport": "local", "database": "sqlite", "batch_size": batch_size, "runs": []}
    for multiple in multiples:
        count = batch_size * multiple
        topic = f"memory-{multiple}x"
        chosen = np.arange(count) % len(images)
        settings = {"root": workdir / "queues", "topic": topic}
        publish("local", settings, images[chosen], labels[chosen], encoding)
        with open_transport("local", **settings):
            pass
        out = _drain_in_worker(model_path / "model.onnx", workdir, topic, batch_size, threads)
        result["runs"].append({"multiple": multiple, "messages": count, "consumed": out["consumed"],
                               "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1),
                               "final_rss_mib": round(out["final_rss_kib"] / 1024, 1) if out["final_rss_kib"] else None})
    first, last = result["runs"][0], result["runs"][-1]
    result["growth"] = round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 4)
    return result


def measure_large_images(model_file: Path, workdir: Path, count: int, batch_size: int,
                         threads: int | None = None) -> dict[str, Any]:
    """Peak RSS of the predict path (local queue + SQLite, a fresh process) over ``count``
    LARGE_SIDE x LARGE_SIDE RGBA PNGs, each at the ``max_pixels`` limit, in batches of
    ``batch_size``: every one must be predicted or dead-lettered within LARGE_BUDGET_MIB."""
    from vectorai.png import encode_png
    from vectorai.transports import open_transport
    from vectorai.transports.base import OutgoingMessage

    payload = encode_png(np.zeros((LARGE_SIDE, LARGE_SIDE, 4), np.uint8))
    topic = f"large-{uuid.uuid4().hex[:8]}"
    with open_transport("local", root=workdir / "queues", topic=topic) as producer:
        producer.publish(OutgoingMessage(payload, {"id": f"large-{i}", "content-type": "image/png"})
                         for i in range(count))
        producer.flush(60)
    started = time.perf_counter()
    out = _drain_in_worker(model_file, workdir, topic, batch_size, threads)
    return {"messages": count, "side": LARGE_SIDE, "bytes_each": len(payload), "batch_size": batch_size,
            "consumed": out["consumed"], "predicted": out["predicted"], "dead_letters": out["dead_letters"],
            "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def noise_png(rng: np.random.Generator, side: int) -> bytes:
    """A greyscale PNG of noise, rows unfiltered and stored uncompressed: 8,355,656 bytes at
    2890 a side, made in milliseconds (encode_png's filter choice takes half a second)."""
    from vectorai.png import SIGNATURE, encode_chunk

    scanlines = np.frombuffer(rng.bytes(side * (side + 1)), dtype=np.uint8).reshape(side, side + 1).copy()
    scanlines[:, 0] = 0
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"".join((SIGNATURE, encode_chunk(b"IHDR", header),
                     encode_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 0)), encode_chunk(b"IEND", b"")))


def measure_byte_budget(model_file: Path, workdir: Path, count: int, threads: int | None = None) -> dict[str, Any]:
    """Peak RSS of the predict path (local queue + SQLite, a fresh process, PredictTask's
    default batch size and byte budget) over ``count`` different 8 MiB noise PNGs: every one
    must be predicted within BYTES_BUDGET_MIB."""
    from vectorai.batching import DEFAULT_MAX_BATCH_BYTES
    from vectorai.transports import open_transport
    from vectorai.transports.base import OutgoingMessage

    rng = np.random.default_rng(8)
    topic = f"bytes-{uuid.uuid4().hex[:8]}"
    size = 0
    with open_transport("local", root=workdir / "queues", topic=topic) as producer:
        for i in range(count):  # one at a time: this process holds one image
            payload = noise_png(rng, BYTES_SIDE)
            size = len(payload)
            producer.publish([OutgoingMessage(payload, {"id": f"noise-{i}", "content-type": "image/png"})])
            producer.flush(60)
    started = time.perf_counter()
    out = _drain_in_worker(model_file, workdir, topic, 256, threads)
    return {"messages": count, "bytes_each": size, "max_batch_bytes": DEFAULT_MAX_BATCH_BYTES,
            "consumed": out["consumed"], "predicted": out["predicted"], "dead_letters": out["dead_letters"],
            "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1), "seconds": round(time.perf_counter() - started, 1)}
