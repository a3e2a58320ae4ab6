"""Memory bounded in bytes: 64 images of 8 MiB each, through a real Kafka broker (a topic of four
partitions) into a real PostgreSQL with PredictTask's defaults, every one stored, the PredictTask
process's peak RSS under PEAK_RSS_LIMIT_MIB (600). Measured 420-481 MiB; 719 MiB without the
collection per byte budget (``predict.memory.CollectEveryBudget``), 289-301 MiB through one partition."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tests.conftest import new_project, pg_rows, unique_name
from tests.unit.helpers import tiny_onnx_model
from vectorai.png import SIGNATURE, decode_png, encode_chunk
from vectorai.transports.base import OutgoingMessage
from vectorai.transports.kafka import KafkaTransport

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

COUNT = 64
#: A grey PNG of noise this wide and high, stored without compression: 8,355,656 bytes, just
#: within [stream] max_message_bytes (8 MiB, 8,388,608).
SIDE = 2890
#: Spread over this many partitions, so that one fetch brings several images at once (16 MiB
#: per partition): the harder case for memory than one partition.
PARTITIONS = 4
PEAK_RSS_LIMIT_MIB = 600


def noise_png(rng: np.random.Generator, side: int = SIDE, channels: int = 1) -> bytes:
    """A valid PNG of noise, ``side`` x ``side``, grey (1 channel) or RGB (3), its rows unfiltered
    and stored uncompressed: made in a few milliseconds, where encode_png's filter choice and zlib
    took half a second."""
    row = side * channels + 1
    scanlines = np.frombuffer(rng.bytes(side * row), dtype=np.uint8).reshape(side, row).copy()
    scanlines[:, 0] = 0  # filter type None
    header = struct.pack(">IIBBBBB", side, side, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"".join((SIGNATURE, encode_chunk(b"IHDR", header),
                     encode_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 0)), encode_chunk(b"IEND", b"")))


def noise_pngs(count: int, seed: int):
    """``count`` different PNGs of noise, made one at a time (the test process holds one)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield OutgoingMessage(noise_png(rng), {"id": f"noise-{i:02d}", "content-type": "image/png"})


# Linux keeps a process's RSS high-water mark across exec, so wait4's ru_maxrss of a child forked
# straight from this test session counts the session's own memory (1.6 GB once an earlier test
# imported TensorFlow). A small Python process starts PredictTask instead and reports its peak.
_PEAK_OF_CHILD = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(p.pid, 0); "
                  "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')")


def run_measured(project, *args: str) -> tuple[int, str, float]:
    """Run ``luigi --module tasks ARGS`` and return its exit status, its output, and the peak
    RSS of that process alone in MiB."""
    log, measured = project.root / "luigi-output.txt", project.root / "peak.txt"
    with log.open("w") as output:
        subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, str(measured), sys.executable, "-m", "luigi", "--module",
                        "tasks", *args, "--local-scheduler"], cwd=project.root, env=project.command_env(),
                       stdout=output, stderr=subprocess.STDOUT, check=True)
    status, peak_kib = measured.read_text().split()
    return int(status), log.read_text(), int(peak_kib) / 1024  # KiB on Linux


def test_the_noise_images_are_valid_pngs():
    rng = np.random.default_rng(1)
    payload = noise_png(rng)
    pixels = decode_png(payload, SIDE * SIDE)
    assert pixels is not None and pixels.shape[:2] == (SIDE, SIDE) and len(payload) <= 8 * 1024 * 1024
    from PIL import Image
    import io

    with Image.open(io.BytesIO(payload)) as image:  # another decoder agrees
        assert np.array_equal(np.asarray(image), pixels.reshape(SIDE, SIDE))


@pytest.mark.system
def test_64_images_of_8_mib_through_kafka_into_postgresql_stay_within_the_memory_bound(tmp_path, kafka_bootstrap, pg_database):
    topic = unique_name("large-images")
    sent: dict[str, tuple[int, str]] = {}
    with KafkaTransport(bootstrap_servers=kafka_bootstrap, topic=topic, partitions=PARTITIONS) as producer:
        for message in noise_pngs(COUNT, seed=21):
            assert 8 * 1024 * 1024 - 40_000 < len(message.payload) <= 8 * 1024 * 1024
            sent[message.attributes["id"]] = (len(message.payload), hashlib.md5(message.payload).hexdigest())
            producer.publish([message])
            producer.flush(60)  # one at a time: the test process need not hold them all

    project = new_project(tmp_path / "home")
    project.use_kafka(kafka_bootstrap, topic=topic).use_postgres(pg_database)
    tiny_onnx_model(tmp_path / "tiny.onnx", 28, 28, 1)  # PredictTask's default image_size and channels
    status, output, peak_mib = run_measured(project, "PredictTask", "--model-path", str(tmp_path / "tiny.onnx"),
                                            "--require-stream", "false")
    assert status == 0 and ":)" in output, output[-6000:]

    stored = {row["message_id"]: (row["size"], row["digest"]) for row in pg_rows(
        pg_database, "SELECT message_id, length(image) AS size, md5(image) AS digest FROM prediction")}
    assert stored == sent  # every image, byte for byte
    [report_path] = (project.data / "reports").glob("predict-*.json")
    report = json.loads(report_path.read_text())
    assert (report["consumed"], report["predicted"], report["dead_letters"]) == (COUNT, COUNT, 0)
    print(f"PredictTask peak RSS: {peak_mib:.0f} MiB for {COUNT} x {sent['noise-00'][0] / 2**20:.2f} MiB "
          f"in {report['batches']} batches, {report['seconds']} s")
    assert peak_mib < PEAK_RSS_LIMIT_MIB, f"PredictTask's peak RSS was {peak_mib:.0f} MiB"
