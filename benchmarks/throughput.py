"""Throughput of the prediction path, measured in one run on one machine on the same images.

    python benchmarks/throughput.py                       # 30,000 images, every transport and database
    python benchmarks/throughput.py --transports local --databases sqlite --images 5000
    python benchmarks/throughput.py --tiny --json out.json
    python benchmarks/throughput.py --cases photos --cores 1,2,4,8,16

What it measures (each as images/s and as a ratio to the raw onnxruntime figure):

1. raw onnxruntime on preprocessed in-memory batches: the ceiling;
2. the whole PredictTask path (consume -> decode -> preprocess -> infer -> insert -> commit ->
   acknowledge) per transport and database, through the same library calls PredictTask makes;
3. StreamData's publishing rate per transport (``vectorai.streaming.publish_images``);
4. Keras ``model.predict`` per image and per batch (when the model's ``keras/model.keras`` exists);
5. PredictTask's peak memory (ru_maxrss of a fresh process) for one batch of messages and for ten,
   and for one batch of hostile ones: 4096x4096 RGBA PNGs (64 KiB each on the wire, 64 MiB of
   pixels each), which must stay under 1 GiB with every message predicted or dead-lettered; and
   for 64 noise PNGs of 8 MiB each with the default byte budget (4 with ``--tiny``), which must
   stay under 600 MiB with every one predicted.

``--cases photos`` measures photos instead (``run_photos``): 640x480 JPEGs into a
MobileNetV2-sized model at 224x224 on the local queue and SQLite, against that model's ceiling;
``--cores 1,2,4`` runs that case once per core count under taskset and prints one table.

The images are real MNIST digits (the ``mnist-sample`` built-in) repeated to ``--images`` with
unique ids. Services it needs are taken from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL /
PUBSUB_EMULATOR_HOST, else from ``python -m services`` if they already run, else started here and
stopped at the end. This is a measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import struct
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: `python benchmarks/throughput.py`

TRANSPORTS = ("local", "kafka", "pubsub")
DATABASES = ("sqlite", "postgres")
ENCODINGS = ("png", "raw", "jpeg")
#: service name (services package) -> environment variable that points at an existing one
SERVICE_ENV = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "postgres": "DATABASE_URL", "pubsub": "PUBSUB_EMULATOR_HOST"}
PUBSUB_PROJECT = "vectorai-bench"
RAW = "raw onnxruntime"


@dataclass
class Case:
    """One measured line of the table."""

    case: str
    kind: str
    images: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, raw_rate: float) -> dict[str, Any]:
        beside = self.extra.get("ceiling_beside_images_per_second")
        return {"case": self.case, "kind": self.kind, "images": self.images,
                "seconds": round(self.seconds, 4), "images_per_second": round(self.rate, 1),
                "ratio_to_raw_onnxruntime": round(self.rate / raw_rate, 4) if raw_rate else None,
                **({"ratio_to_ceiling_beside": round(self.rate / beside, 4)} if beside else {}),
                **self.extra}


# --- inputs ---------------------------------------------------------------------------------


def load_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real MNIST digits (uint8, N x 28 x 28) and labels, the 5,000 repeated as needed."""
    from vectorai.datasets import load_dataset

    with tempfile.TemporaryDirectory() as empty:  # an empty root: always the built-in
        data = load_dataset("mnist-sample", Path(empty))
    index = np.arange(count) % len(data)
    return np.ascontiguousarray(data.images[index]), data.labels[index]


def find_model(given: str | None, workdir: Path, log: Callable[[str], None]) -> Path:
    """The exported model dir (holding model.onnx): given, else the newest under models/, else a
    quick one trained here (1 epoch on mnist-sample, in a subprocess so TensorFlow stays out)."""
    if given:
        path = Path(given)
        path = path.parent if path.suffix == ".onnx" else path
        if not (path / "model.onnx").is_file():
            raise SystemExit(f"--model {given}: no model.onnx there")
        return path
    exported = sorted((REPO / "models").glob("*/onnx/model.onnx"), key=lambda p: p.stat().st_mtime)
    if exported:
        return exported[-1].parent
    out = workdir / "quick-model"
    log(f"no exported model under {REPO / 'models'}: training a quick one (1 epoch) in {out}")
    _run_worker(["train", "--out", str(out)])
    return out / "onnx"


# --- services -------------------------------------------------------------------------------


class Services:
    """Addresses of Kafka / PostgreSQL / the Pub/Sub emulator, and stopping what it started.

    An address in the environment wins. Otherwise Kafka and PostgreSQL are private instances in
    their own work dirs (so ``python -m services down`` in another shell cannot stop them
    mid-run); the Pub/Sub emulator is the ``services`` one, reused when it already runs.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.addresses: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self._stops: list[tuple[str, Callable[[], None]]] = []
        self._instances: dict[str, Any] = {}  # the servers started here, whose pids we know

    def get(self, name: str) -> str | None:
        if name in self.addresses or name in self.failed:
            return self.addresses.get(name)
        value = os.environ.get(SERVICE_ENV[name], "")
        if name == "postgres" and not value.startswith(("postgres://", "postgresql://")):
            value = ""
        if not value:
            from services.common import ServiceError

            try:
                value = self._start(name)
            except (ServiceError, OSError) as err:
                self.failed[name] = str(err).splitlines()[0]
                self.log(f"{name} unavailable: {self.failed[name]}")
                return None
        self.addresses[name] = value
        return value

    def _start(self, name: str) -> str:
        from services.common import STATE_DIR

        if name == "pubsub":
            return self._start_private_emulator()
        if name == "kafka":
            from services.kafka import KafkaBroker as Instance
        else:
            from services.postgres import PostgresCluster as Instance
        self.log(f"starting {name} ...")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # PostgreSQL's under the system temp dir, not the checkout: run as root, the server runs
        # as an unprivileged user that cannot enter a checkout in a 0700 home.
        parent = None if name == "postgres" else STATE_DIR
        instance = Instance.create(Path(tempfile.mkdtemp(prefix=f"vectorai-bench-{name}-", dir=parent)))
        self._stops.append((name, instance.remove))
        self._instances[name] = instance
        return instance.start()

    def server_pids(self, name: str) -> list[int] | None:
        """The processes of a server started here: the broker's JVM; PostgreSQL's postmaster
        and everything it started (backends, checkpointer, WAL writer). None for one given by
        the environment, which may run elsewhere."""
        from services.common import children_of

        instance = self._instances.get(name)
        if instance is None:
            return None
        if name == "postgres":
            try:  # the pid file names runuser, which started the postmaster
                postmaster = int((instance.data_dir / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            return [postmaster, *children_of(postmaster)]
        pid = instance.process.pid()
        return [pid] if pid is not None else None

    def _start_private_emulator(self) -> str:
        """The emulator launcher keeps its state in module globals, so a private one is run by
        ``python -m services`` in a subprocess with a state dir of its own."""
        from services.common import STATE_DIR, ServiceError

        self.log("starting pubsub ...")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = Path(tempfile.mkdtemp(prefix="bench-pubsub-", dir=STATE_DIR))
        env = {**os.environ, "VECTORAI_SERVICES_DIR": str(state)}

        def services(command: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "services", command, "pubsub"], cwd=REPO, env=env,
                                  capture_output=True, text=True)

        def stop() -> None:
            services("down")
            shutil.rmtree(state, ignore_errors=True)

        self._stops.append(("pubsub", stop))
        started = services("up")
        if started.returncode != 0:
            raise ServiceError((started.stderr.strip() or "python -m services up pubsub failed").splitlines()[-1])
        return json.loads((state / "services.json").read_text())["pubsub"]

    def stop_started(self) -> None:
        while self._stops:
            name, stop = self._stops.pop()
            stop()
            self.log(f"stopped {name}")


# --- transports and databases ---------------------------------------------------------------


def transport_settings(name: str, services: Services, workdir: Path, topic: str, group: str) -> dict[str, Any]:
    """Keyword settings for open_transport; ``group`` is the consumer group / subscription."""
    if name == "local":
        return {"root": workdir / "queues", "topic": topic, "group": group}
    if name == "kafka":
        return {"bootstrap_servers": services.get("kafka"), "topic": topic, "group": group}
    return {"project": PUBSUB_PROJECT, "topic": topic, "subscription": group,
            "emulator_host": services.get("pubsub")}


class Databases:
    """A fresh, empty results database per case: a new SQLite file, or a new PostgreSQL database
    created (and dropped at the end) on the server."""

    def __init__(self, services: Services, workdir: Path) -> None:
        self.services = services
        self.workdir = workdir
        self.created: list[tuple[str, str]] = []

    def fresh_url(self, kind: str, label: str) -> str:
        from vectorai.db import sqlite_url

        name = f"bench_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
        if kind == "sqlite":
            return sqlite_url(self.workdir / f"{name}.sqlite")
        base = self.services.get("postgres")
        self._admin(base, "CREATE DATABASE {}", name)
        self.created.append((base, name))
        return base.rsplit("/", 1)[0] + "/" + name

    def drop_created(self) -> None:
        for base, name in self.created:
            try:
                self._admin(base, "DROP DATABASE IF EXISTS {}", name)
            except Exception as err:  # noqa: BLE001 - cleanup must not hide the results
                print(f"could not drop database {name}: {err}", file=sys.stderr)
        self.created.clear()

    @staticmethod
    def _admin(url: str, statement: str, database: str) -> None:
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(url, connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL(statement).format(sql.Identifier(database)))
        finally:
            connection.close()


def available(transport: str, database: str, services: Services) -> str | None:
    """None when the case can run, else why not."""
    for name in ((transport,) if transport != "local" else ()) + (("postgres",) if database == "postgres" else ()):
        if services.get(name) is None:
            return f"{name} unavailable: {services.failed.get(name, '?')}"
    return None


# --- measurements ---------------------------------------------------------------------------


def measure_raw_onnxruntime(classifier, batch: np.ndarray, batch_size: int, repeats: int = 3,
                            workers: int = 1) -> Case:
    """The ceiling: session calls on already preprocessed in-memory images, ``batch_size`` each.

    With ``workers`` > 1, that many threads call the same session side by side, each taking the
    next slice (onnxruntime's ``run`` is thread-safe and releases the GIL).
    """
    classifier.predict_proba(batch[:batch_size])  # warm-up: first call allocates arenas
    starts = range(0, len(batch), batch_size)

    def classify(take: Callable[[], int | None]) -> None:
        while (start := take()) is not None:
            classifier.predict_proba(batch[start:start + batch_size])

    best = float("inf")
    for _ in range(repeats):
        take = _shared(starts)
        with ThreadPoolExecutor(max_workers=max(workers - 1, 1)) as pool:
            started = time.perf_counter()
            others = [pool.submit(classify, take) for _ in range(workers - 1)]
            classify(take)
            for other in others:
                other.result()  # a worker's error fails the measurement instead of shrinking it
            best = min(best, time.perf_counter() - started)
    return Case(RAW, "ceiling", len(batch), best, {"best_of": repeats})


def _shared(items: Iterable[int]) -> Callable[[], int | None]:
    """A function that several threads may call, each item going to exactly one of them; None
    once all are taken. (Not a shared generator: two threads resuming one generator at once
    raise "generator already executing", which killed a worker mid-measurement.)"""
    lock = threading.Lock()
    source = iter(items)

    def take() -> int | None:
        with lock:
            return next(source, None)

    return take


def ceiling_ways(model_file: Path, batch_size: int, threads: int | None) -> dict[str, tuple[Any, int, int]]:
    """The ways the ceiling is measured (label: classifier, images per call, side-by-side workers):
    one call at a time with every core, or with the prediction loop's own thread count (every core
    but one); or one single-threaded call per core side by side, on batches and on the chunks the
    loop splits them into (``predict.CHUNK``), as the loop does when it helps the model."""
    from vectorai.inference import OnnxClassifier, available_cores, default_threads
    from vectorai.predict import CHUNK

    thread_counts = [threads] if threads else sorted({available_cores(), default_threads()}, reverse=True)
    single = OnnxClassifier(model_file, threads=1)
    ways = {f"{n} threads": (single if n == 1 else OnnxClassifier(model_file, threads=n), batch_size, 1)
            for n in thread_counts}
    if available_cores() > 1:
        for size in sorted({batch_size, CHUNK}, reverse=True):
            ways[f"{available_cores()} side by side, {size} per call"] = (single, size, available_cores())
    return ways


def compare_ceilings(ways: dict[str, tuple[Any, int, int]], baseline_ways: dict[str, tuple[Any, int, int]],
                     batch: np.ndarray, passes: int = 3) -> dict[str, Any]:
    """The raw onnxruntime ceiling of the model (``ways``) and of another one (``baseline_ways``,
    e.g. the previous default) on the same images, in alternating passes, so that a slow stretch
    of a shared machine slows both alike: the best pass of each way for each model, and the ratio
    of the two models' best ways."""
    model_spec = next(iter(ways.values()))[0].spec
    baseline_spec = next(iter(baseline_ways.values()))[0].spec
    if model_spec != baseline_spec:
        raise SystemExit(f"--baseline-model takes {baseline_spec}, the model {model_spec}: they cannot share images")
    per_way: dict[str, dict[str, float]] = {label: {"model": 0.0, "baseline": 0.0} for label in ways}
    for _ in range(passes):
        for label in ways:
            for which, chosen in (("model", ways), ("baseline", baseline_ways)):
                classifier, batch_size, workers = chosen[label]
                rate = measure_raw_onnxruntime(classifier, batch, batch_size, repeats=1, workers=workers).rate
                per_way[label][which] = round(max(per_way[label][which], rate), 1)
    best = max(way["model"] for way in per_way.values())
    best_baseline = max(way["baseline"] for way in per_way.values())
    return {"images": len(batch), "passes": passes, "images_per_second": best,
            "baseline_images_per_second": best_baseline,
            "ratio": round(best / best_baseline, 4) if best_baseline else None, "per_way": per_way}


def measure_ceiling(ways: dict[str, tuple[Any, int, int]], batch: np.ndarray, when: str,
                    runs: dict[str, float]) -> Case:
    """The fastest of ``ways`` (label: classifier, images per call, side-by-side workers); every
    figure goes into ``runs``."""
    cases = []
    for label, (classifier, batch_size, workers) in ways.items():
        cases.append(measure_raw_onnxruntime(classifier, batch, batch_size, workers=workers))
        runs[f"{when}, {label}"] = round(cases[-1].rate, 1)
    return min(cases, key=lambda case: case.seconds)


def publish(transport_name: str, settings: dict[str, Any], images: np.ndarray, labels: np.ndarray,
            encoding: str) -> float:
    """Publish every image through StreamData's function; seconds until all are confirmed."""
    from vectorai.streaming import publish_images
    from vectorai.transports import open_transport

    with open_transport(transport_name, **settings) as transport:
        started = time.perf_counter()
        publish_images(transport, images, labels, dataset="bench", encoding=encoding, timeout_s=600)
        return time.perf_counter() - started


def predict_end_to_end(transport_name: str, settings: dict[str, Any], database_url: str, model_path: Path,
                       batch_size: int, threads: int | None, timeout_ms: int, shadow_path: Path | None = None):
    """PredictTask's run(): open the model (and a shadow model), the database and the source,
    drain the stream."""
    from vectorai.db import connect
    from vectorai.inference import OnnxClassifier
    from vectorai.predict import run_predictions
    from vectorai.transports import open_transport

    classifier = OnnxClassifier(model_path, threads=threads)
    shadow = OnnxClassifier(shadow_path, threads=threads) if shadow_path else None
    database = connect(database_url)
    try:
        with open_transport(transport_name, **settings) as source:
            return run_predictions([source], classifier, database, batch_size=batch_size, timeout_ms=timeout_ms,
                                   shadow=shadow)
    finally:
        database.close()


def process_cpu(services: Services, transport: str, database: str) -> dict[str, float]:
    """CPU seconds used so far, read from /proc in this run, by each process of a Kafka+PostgreSQL
    case: PredictTask (this process: the benchmark runs its loop in-process, all threads), the
    broker's JVM and the PostgreSQL server (postmaster, its processes, and backends that ended).
    Empty for other cases, and without the servers' part when they came from the environment."""
    from services.common import cpu_seconds

    if (transport, database) != ("kafka", "postgres"):
        return {}
    found = {"PredictTask": time.process_time()}
    for label, name, reaped in (("broker", "kafka", False), ("PostgreSQL server", "postgres", True)):
        pids = services.server_pids(name)
        if pids:
            found[label] = cpu_seconds(pids, reaped_children=reaped)
    return found


def cpu_per_thousand(before: dict[str, float], after: dict[str, float], images: int) -> dict[str, float]:
    """Per process, the CPU seconds between ``before`` and ``after`` per 1,000 ``images``."""
    if not images:
        return {}
    return {name: round((after[name] - before[name]) * 1000 / images, 3) for name in after if name in before}


def open_consumers(transport_name: str, services: Services, workdir: Path, topic: str, groups: list[str]) -> None:
    """Create each consumer's group/subscription before publishing: Pub/Sub drops messages sent to
    a topic that has no subscription yet."""
    if transport_name != "pubsub":
        return
    from vectorai.transports import open_transport

    for group in groups:
        open_transport(transport_name, **transport_settings(transport_name, services, workdir, topic, group)).close()


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
        out = _run_worker(["memory", "--model", str(model_path / "model.onnx"), "--queue-root",
                           str(workdir / "queues"), "--topic", topic, "--database",
                           str(workdir / f"{topic}.sqlite"), "--batch-size", str(batch_size)]
                          + (["--threads", str(threads)] if threads else []))
        result["runs"].append({"multiple": multiple, "messages": count, "consumed": out["consumed"],
                               "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1),
                               "final_rss_mib": round(out["final_rss_kib"] / 1024, 1) if out["final_rss_kib"] else None})
    first, last = result["runs"][0], result["runs"][-1]
    result["growth"] = round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 4)
    return result


#: The hostile batch of the memory section: this many pixels a side, RGBA, all zero.
LARGE_SIDE = 4096
LARGE_BUDGET_MIB = 1024


def measure_large_images(model_file: Path, workdir: Path, count: int, batch_size: int,
                         threads: int | None = None) -> dict[str, Any]:
    """Peak RSS of the predict path (local queue + SQLite, a fresh process) over ``count``
    LARGE_SIDE x LARGE_SIDE RGBA PNGs, each at the ``max_pixels`` limit, in batches of
    ``batch_size``: every one must be predicted or dead-lettered within LARGE_BUDGET_MIB."""
    from vectorai.png import encode_png
    from vectorai.transports import open_transport
    from vectorai.transports.base import OutgoingMessage

    payload = encode_png(np.zeros((LARGE_SIDE, LARGE_SIDE, 4), np.uint8))
    settings = {"root": workdir / "queues", "topic": f"large-{uuid.uuid4().hex[:8]}"}
    with open_transport("local", **settings) as producer:
        producer.publish(OutgoingMessage(payload, {"id": f"large-{i}", "content-type": "image/png"})
                         for i in range(count))
        producer.flush(60)
    started = time.perf_counter()
    out = _run_worker(["memory", "--model", str(model_file), "--queue-root", str(settings["root"]), "--topic",
                       settings["topic"], "--database", str(workdir / f"{settings['topic']}.sqlite"),
                       "--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else []))
    return {"messages": count, "side": LARGE_SIDE, "bytes_each": len(payload), "batch_size": batch_size,
            "consumed": out["consumed"], "predicted": out["predicted"], "dead_letters": out["dead_letters"],
            "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1)}


#: The byte-budget case of the memory section: this many noise PNGs of just under 8 MiB each
#: ([stream] max_message_bytes), through PredictTask's defaults (max_batch_bytes 64 MiB).
BYTES_COUNT, BYTES_SIDE = 64, 2890
BYTES_BUDGET_MIB = 600


def _noise_png(rng: np.random.Generator, side: int) -> bytes:
    """A greyscale PNG of noise, rows unfiltered and stored uncompressed: 8,355,656 bytes at
    2890 a side, made in milliseconds (encode_png's filter choice takes half a second)."""
    from vectorai.png import SIGNATURE, _chunk

    scanlines = np.frombuffer(rng.bytes(side * (side + 1)), dtype=np.uint8).reshape(side, side + 1).copy()
    scanlines[:, 0] = 0
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"".join((SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 0)),
                     _chunk(b"IEND", b"")))


def measure_byte_budget(model_file: Path, workdir: Path, count: int, threads: int | None = None) -> dict[str, Any]:
    """Peak RSS of the predict path (local queue + SQLite, a fresh process, PredictTask's
    default batch size and byte budget) over ``count`` different 8 MiB noise PNGs: every one
    must be predicted within BYTES_BUDGET_MIB."""
    from vectorai.batching import DEFAULT_MAX_BATCH_BYTES
    from vectorai.transports import open_transport
    from vectorai.transports.base import OutgoingMessage

    rng = np.random.default_rng(8)
    settings = {"root": workdir / "queues", "topic": f"bytes-{uuid.uuid4().hex[:8]}"}
    size = 0
    with open_transport("local", **settings) as producer:
        for i in range(count):  # one at a time: this process holds one image
            payload = _noise_png(rng, BYTES_SIDE)
            size = len(payload)
            producer.publish([OutgoingMessage(payload, {"id": f"noise-{i}", "content-type": "image/png"})])
            producer.flush(60)
    started = time.perf_counter()
    out = _run_worker(["memory", "--model", str(model_file), "--queue-root", str(settings["root"]), "--topic",
                       settings["topic"], "--database", str(workdir / f"{settings['topic']}.sqlite"),
                       "--batch-size", "256"] + (["--threads", str(threads)] if threads else []))
    return {"messages": count, "bytes_each": size, "max_batch_bytes": DEFAULT_MAX_BATCH_BYTES,
            "consumed": out["consumed"], "predicted": out["predicted"], "dead_letters": out["dead_letters"],
            "peak_rss_mib": round(out["peak_rss_kib"] / 1024, 1), "seconds": round(time.perf_counter() - started, 1)}


# --- subprocess workers (TensorFlow and memory measurements stay out of this process) ---------


def _run_worker(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="throughput.py --worker")
    parser.add_argument("job", choices=["train", "keras", "memory", "photos"])
    parser.add_argument("--out")
    parser.add_argument("--model")
    parser.add_argument("--queue-root")
    parser.add_argument("--topic")
    parser.add_argument("--database")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-image", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--decode-threads", type=int, default=0)
    parser.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_false")
    args = parser.parse_args(argv)
    if args.job == "photos":
        result = _photos_worker(args)
    elif args.job == "train":
        result = _train_quick_model(Path(args.out))
    elif args.job == "keras":
        result = _keras_baselines(Path(args.model), args.images, args.per_image, args.batch_size)
    else:
        from vectorai.db import connect, sqlite_url
        from vectorai.inference import OnnxClassifier
        from vectorai.predict import give_large_buffers_back, run_predictions
        from vectorai.transports import open_transport

        give_large_buffers_back()  # as PredictTask does
        classifier = OnnxClassifier(Path(args.model), threads=args.threads)
        database = connect(sqlite_url(Path(args.database)))
        with open_transport("local", root=args.queue_root, topic=args.topic) as source:
            report = run_predictions([source], classifier, database, batch_size=args.batch_size, timeout_ms=200)
        database.close()
        result = {"consumed": report.consumed, "predicted": report.predicted + report.already_predicted,
                  "dead_letters": report.dead_letters, "peak_rss_kib": _peak_rss_kib(),
                  "final_rss_kib": _proc_status_kib("VmRSS")}
    print(json.dumps(result))
    return 0


def _photos_worker(args: argparse.Namespace) -> dict[str, Any]:
    """PredictTask's run over the photos on the local queue into SQLite, in this fresh process:
    its throughput, its CPU (every thread) and its peak memory."""
    from vectorai.db import connect, sqlite_url
    from vectorai.inference import OnnxClassifier
    from vectorai.predict import give_large_buffers_back, run_predictions
    from vectorai.transports import open_transport

    give_large_buffers_back()  # as PredictTask does
    classifier = OnnxClassifier(Path(args.model), threads=args.threads)
    database = connect(sqlite_url(Path(args.database)))
    cpu = time.process_time()
    with open_transport("local", root=args.queue_root, topic=args.topic) as source:
        report = run_predictions([source], classifier, database, batch_size=args.batch_size, timeout_ms=200,
                                 decode_threads=args.decode_threads or None, jpeg_draft=args.jpeg_draft)
    cpu = time.process_time() - cpu
    database.close()
    return {"consumed": report.consumed, "predicted": report.predicted, "dead_letters": report.dead_letters,
            "seconds": report.seconds, "cpu_seconds": cpu, "peak_rss_kib": _peak_rss_kib(),
            "decode_threads": report.decode_threads}


def _peak_rss_kib() -> int:
    """This process's peak resident memory. Linux's VmHWM first: ru_maxrss keeps the high-water
    mark from before exec, i.e. that of the (large) parent this worker was forked from."""
    return _proc_status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _train_quick_model(out: Path) -> dict[str, Any]:
    """1 epoch of the project's CNN on mnist-sample, exported like ExportOnnx does."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from vectorai.export import export_onnx
    from vectorai.preprocess import PreprocessSpec, preprocess_images
    from vectorai.training import build_model

    images, labels = load_images(5000)
    spec = PreprocessSpec(28, 28, 1)
    x = preprocess_images(images, spec)
    keras.utils.set_random_seed(0)
    model = build_model(spec, 10, 1e-3)
    model.fit(x, labels, epochs=1, batch_size=64, verbose=0)
    (out / "keras").mkdir(parents=True, exist_ok=True)
    model.save(out / "keras" / "model.keras")
    export_onnx(out / "keras" / "model.keras", out / "onnx" / "model.onnx", class_names=[str(d) for d in range(10)],
                spec=spec, model_version="benchmark-quick", check_images=x[:500], tolerance=1e-4)
    return {"model": str(out / "onnx")}


def _keras_baselines(keras_path: Path, count: int, per_image: int, batch_size: int) -> dict[str, Any]:
    """The old code path: Keras predict per image, and per batch, on preprocessed images."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from vectorai.preprocess import PreprocessSpec, preprocess_images

    model = keras.models.load_model(keras_path)
    shape = model.inputs[0].shape
    x = preprocess_images(load_images(count)[0], PreprocessSpec(int(shape[1]), int(shape[2]), int(shape[3])))
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up (graph tracing)
    model.predict(x[:1], verbose=0)
    started = time.perf_counter()
    for i in range(min(per_image, count)):
        model.predict(x[i:i + 1], verbose=0)
    per_image_s = time.perf_counter() - started
    started = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    batch_s = time.perf_counter() - started
    return {"per_image": {"images": min(per_image, count), "seconds": per_image_s},
            "per_batch": {"images": count, "seconds": batch_s}}


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from vectorai.inference import available_cores
    from vectorai.preprocess import preprocess_images

    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    for name in encodings:
        if name not in ENCODINGS:
            raise SystemExit(f"--encodings: unknown {name!r}; choose from {', '.join(ENCODINGS)}")
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    for name in transports:
        if name not in TRANSPORTS:
            raise SystemExit(f"--transports: unknown {name!r}; choose from {', '.join(TRANSPORTS)}")
    for name in databases:
        if name not in DATABASES:
            raise SystemExit(f"--databases: unknown {name!r}; choose from {', '.join(DATABASES)}")

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vectorai-bench-")))
        services = Services(log)
        stack.callback(services.stop_started)
        dbs = Databases(services, workdir)
        stack.callback(dbs.drop_created)

        images, labels = load_images(args.images)
        model_dir = find_model(args.model, workdir, log)
        baseline_file = None
        if args.baseline_model:
            baseline_file = find_model(args.baseline_model, workdir, log) / "model.onnx"
        # The ceiling is onnxruntime at its best on this machine, whichever of ceiling_ways is fastest.
        ways = ceiling_ways(model_dir / "model.onnx", args.batch_size, args.threads)
        single = next(iter(ways.values()))[0]
        log(f"{len(images)} images, batch size {args.batch_size}, model {model_dir}, "
            f"encodings {', '.join(encodings)}, {available_cores()} CPUs")
        cases: list[Case] = []
        skipped: dict[str, str] = {}

        # 1. the ceiling
        batch = preprocess_images(images, single.spec)
        raw_runs: dict[str, float] = {}
        raw = measure_ceiling(ways, batch, "first", raw_runs)
        cases.append(raw)
        log(f"{RAW}: {raw.rate:,.0f} images/s")
        comparison = None
        if args.baseline_model:
            comparison = compare_ceilings(ways, ceiling_ways(baseline_file, args.batch_size, args.threads), batch)
            comparison.update(model=str(model_dir), baseline=str(baseline_file.parent))
            log(f"{RAW}, this model vs --baseline-model: {comparison['images_per_second']:,.0f} vs "
                f"{comparison['baseline_images_per_second']:,.0f} images/s (x{comparison['ratio']:.3f})")
        # The ceiling beside each end-to-end case: the usually fastest way again, right before
        # and right after the case. How many cores this VM really gets changes within a run
        # (the same measurement moved by up to 28% between a run's start and end), and a case is
        # judged against the ceiling of its own minutes, the higher of the two.
        beside_label = list(ways)[-1]  # side by side on the loop's chunks, where there are cores
        beside = [raw_runs[f"first, {beside_label}"]]

        def ceiling_now() -> float:
            classifier, size, workers = ways[beside_label]
            rate = measure_raw_onnxruntime(classifier, batch, size, workers=workers).rate
            raw_runs[f"beside {len(beside)}, {beside_label}"] = round(rate, 1)
            beside.append(rate)
            return rate

        # 2 + 3. publish once per transport and encoding, then drain it once per database (each
        # in its own consumer group / subscription, into its own fresh database)
        for encoding, transport in ((e, t) for e in encodings for t in transports):
            wanted = list(databases)
            reason = available(transport, "sqlite", services)
            if reason:
                skipped[f"publish {transport} ({encoding})"] = reason
                for db in wanted:
                    skipped[f"predict {transport}+{db} ({encoding})"] = reason
                continue
            topic = f"bench-{transport}-{uuid.uuid4().hex[:8]}"
            groups = {db: f"bench-{db}-{uuid.uuid4().hex[:8]}" for db in wanted}
            try:
                open_consumers(transport, services, workdir, topic, list(groups.values()))
                # The publisher names the first consumer's subscription: Pub/Sub needs one.
                seconds = publish(transport, transport_settings(transport, services, workdir, topic,
                                                                groups[wanted[0]]), images, labels, encoding)
            except Exception as err:  # noqa: BLE001 - one failed service must not lose the run
                for name in [f"publish {transport} ({encoding})"] + [f"predict {transport}+{db} ({encoding})"
                                                                       for db in wanted]:
                    skipped[name] = _failure(err)
                log(f"publish {transport} ({encoding}) failed: {_failure(err)}")
                continue
            cases.append(Case(f"publish {transport} ({encoding})", "publish", len(images), seconds,
                              {"transport": transport, "encoding": encoding}))
            log(f"{cases[-1].case}: {cases[-1].rate:,.0f} images/s")
            for db in wanted:
                name = f"predict {transport}+{db} ({encoding})"
                reason = available(transport, db, services)
                if reason:
                    skipped[name] = reason
                    continue
                try:
                    url = dbs.fresh_url(db, f"{transport}-{encoding}")
                    cpu_before = process_cpu(services, transport, db)
                    report = predict_end_to_end(
                        transport, transport_settings(transport, services, workdir, topic, groups[db]), url,
                        model_dir / "model.onnx", args.batch_size, args.threads, args.timeout_ms)
                    cpu = cpu_per_thousand(cpu_before, process_cpu(services, transport, db), report.consumed)
                except Exception as err:  # noqa: BLE001 - one failed service must not lose the run
                    skipped[name] = _failure(err)
                    log(f"{name} failed: {_failure(err)}")
                    continue
                before = beside[-1]
                cases.append(Case(name, "end to end", report.consumed, report.seconds, {
                    "transport": transport, "database": db, "encoding": encoding,
                    "predicted": report.predicted, "dead_letters": report.dead_letters,
                    "batches": report.batches,
                    "accuracy": round(report.correct / report.labelled, 4) if report.labelled else None,
                    "ceiling_beside_images_per_second": round(max(before, ceiling_now()), 1),
                    **({"cpu_seconds_per_1000_images": cpu} if cpu else {})}))
                log(f"{name}: {cases[-1].rate:,.0f} images/s ({report.predicted} rows), "
                    f"ceiling beside it {cases[-1].extra['ceiling_beside_images_per_second']:,.0f}"
                    + (f"; CPU s per 1,000 images: {', '.join(f'{k} {v}' for k, v in cpu.items())}" if cpu else ""))
            if transport == "local" and "sqlite" in wanted:
                # Shadow scoring's cost: the same drain, with the model shadowing itself.
                name = f"predict local+sqlite ({encoding}) + shadow"
                report = predict_end_to_end(
                    transport, transport_settings(transport, services, workdir, topic, f"bench-shadow-{encoding}"),
                    dbs.fresh_url("sqlite", f"shadow-{encoding}"), model_dir / "model.onnx", args.batch_size,
                    args.threads, args.timeout_ms, shadow_path=model_dir / "model.onnx")
                before = beside[-1]
                cases.append(Case(name, "end to end", report.consumed, report.seconds, {
                    "transport": transport, "database": "sqlite", "encoding": encoding,
                    "predicted": report.predicted, "dead_letters": report.dead_letters,
                    "batches": report.batches, "shadow_agreement": report.to_dict()["shadow"]["agreement"],
                    "ceiling_beside_images_per_second": round(max(before, ceiling_now()), 1)}))
                log(f"{name}: {cases[-1].rate:,.0f} images/s")

        # The ceiling again: on a machine shared with the services, the best of every measurement
        # is the honest (harder to reach) figure for the run.
        again = measure_ceiling(ways, batch, "last", raw_runs)
        log(f"{RAW} again: {again.rate:,.0f} images/s")
        raw.extra.update(images_per_second_per_run=raw_runs)
        raw.seconds = raw.images / max(raw_runs.values())  # the highest, beside the cases included
        del batch, ways, single

        # 4. the Keras baseline, in a subprocess so TensorFlow never shares this process
        keras_path = model_dir.parent / "keras" / "model.keras"
        if args.keras and keras_path.is_file():
            out = _run_worker(["keras", "--model", str(keras_path), "--images", str(min(args.images, 10000)),
                               "--per-image", str(args.keras_per_image), "--batch-size", str(args.batch_size)])
            cases.append(Case("keras predict per image", "baseline", out["per_image"]["images"],
                              out["per_image"]["seconds"]))
            cases.append(Case("keras predict per batch", "baseline", out["per_batch"]["images"],
                              out["per_batch"]["seconds"], {"batch_size": args.batch_size}))
            log(f"keras per image: {cases[-2].rate:,.1f} images/s, per batch: {cases[-1].rate:,.0f} images/s")
        else:
            skipped["keras predict"] = "disabled" if not args.keras else f"no Keras model at {keras_path}"

        # 5. memory for 1x and 10x one batch of messages
        memory = measure_memory(model_dir, workdir, images, labels, args.batch_size, encodings[0], (1, 10),
                                args.threads)
        log("peak memory: " + ", ".join(f"{r['messages']} messages {r['peak_rss_mib']} MiB" for r in memory["runs"]))
        memory["large"] = measure_large_images(model_dir / "model.onnx", workdir, 4 if args.tiny else args.batch_size,
                                               args.batch_size, args.threads)
        log(f"peak memory, {memory['large']['messages']} {LARGE_SIDE}x{LARGE_SIDE} PNGs: "
            f"{memory['large']['peak_rss_mib']} MiB")
        memory["bytes"] = measure_byte_budget(model_dir / "model.onnx", workdir, 4 if args.tiny else BYTES_COUNT,
                                              args.threads)
        log(f"peak memory, {memory['bytes']['messages']} PNGs of 8 MiB: {memory['bytes']['peak_rss_mib']} MiB")

    import onnxruntime

    raw_rate = raw.rate
    results = [case.to_dict(raw_rate) for case in cases]
    by_name = {r["case"]: r for r in results}
    return {
        "machine": {"cpus": available_cores(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__},
        "images": len(images),
        "batch_size": args.batch_size,
        "encodings": encodings,
        "model": str(model_dir),
        "raw_onnxruntime_images_per_second": round(raw_rate, 1),
        "results": results,
        "skipped": skipped,
        "memory": memory,
        "targets": {
            **{f"kafka+postgres ({e}) >= 40% of raw": _target(by_name.get(f"predict kafka+postgres ({e})"), 0.40)
               for e in encodings},
            **{f"local+sqlite ({e}) >= 50% of raw": _target(by_name.get(f"predict local+sqlite ({e})"), 0.50)
               for e in encodings},
            "peak memory 10x within 10% of 1x": abs(memory["growth"]) <= 0.10,
            f"peak memory of {LARGE_SIDE}x{LARGE_SIDE} PNGs under {LARGE_BUDGET_MIB} MiB, each predicted or "
            f"dead-lettered": memory["large"]["peak_rss_mib"] < LARGE_BUDGET_MIB
            and memory["large"]["consumed"] == memory["large"]["messages"]
            == memory["large"]["predicted"] + memory["large"]["dead_letters"],
            f"peak memory of 8 MiB PNGs under {BYTES_BUDGET_MIB} MiB, every one predicted":
            memory["bytes"]["peak_rss_mib"] < BYTES_BUDGET_MIB
            and memory["bytes"]["predicted"] == memory["bytes"]["messages"],
        },
        "targets_judged_against": "the ceiling measured beside each case (ratio_to_ceiling_beside)",
        **({"baseline_model": comparison} if comparison else {}),
    }


def _failure(err: BaseException) -> str:
    return f"failed: {type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0][:300]


def _target(result: dict[str, Any] | None, ratio: float) -> bool | None:
    """Met when the case reaches ``ratio`` of the ceiling measured beside it."""
    return None if result is None else result["ratio_to_ceiling_beside"] >= ratio


def format_table(summary: dict[str, Any]) -> str:
    rows = [("case", "images", "images/s", "x raw ORT", "x beside")]
    for r in summary["results"]:
        rows.append((r["case"], f"{r['images']:,}", f"{r['images_per_second']:,.1f}",
                     f"{r['ratio_to_raw_onnxruntime']:.3f}",
                     f"{r['ratio_to_ceiling_beside']:.3f}" if "ratio_to_ceiling_beside" in r else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [" | ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    memory = summary["memory"]
    lines.append("")
    lines.append("peak memory (local+sqlite): " + ", ".join(
        f"{r['messages']:,} messages {r['peak_rss_mib']:.1f} MiB" for r in memory["runs"])
        + f" (growth {memory['growth']:+.1%})")
    large = memory["large"]
    lines.append(f"peak memory, {large['messages']:,} {large['side']}x{large['side']} RGBA PNGs of "
                 f"{large['bytes_each'] // 1024} KiB in batches of {large['batch_size']}: {large['peak_rss_mib']:.1f} MiB "
                 f"({large['predicted']} predicted, {large['dead_letters']} dead letters, {large['seconds']} s)")
    noise = memory["bytes"]
    lines.append(f"peak memory, {noise['messages']:,} noise PNGs of {noise['bytes_each'] / 2**20:.2f} MiB, "
                 f"max_batch_bytes {noise['max_batch_bytes'] >> 20} MiB: {noise['peak_rss_mib']:.1f} MiB "
                 f"({noise['predicted']} predicted, {noise['seconds']} s)")
    if "baseline_model" in summary:
        compared = summary["baseline_model"]
        lines.append(f"{RAW}, this model vs --baseline-model {compared['baseline']}: "
                     f"{compared['images_per_second']:,.1f} vs {compared['baseline_images_per_second']:,.1f} images/s, "
                     f"ratio {compared['ratio']:.3f} (best of {compared['passes']} alternating passes each)")
    for name, reason in summary["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    by_name = {r["case"]: r for r in summary["results"]}
    for name, met in summary["targets"].items():
        line = f"target {name}: {'met' if met else 'not measured' if met is None else 'NOT met'}"
        case = by_name.get("predict " + name.split(" >=")[0])
        if case is not None and "ratio_to_ceiling_beside" in case:
            line += (f" ({case['ratio_to_ceiling_beside']:.3f} of the ceiling beside it, "
                     f"{case['ratio_to_raw_onnxruntime']:.3f} of the run's highest)")
        lines.append(line)
    return "\n".join(lines)


# --- photos: 640x480 JPEGs into a MobileNetV2-sized model ---------------------------------------

PHOTO_SIZE = (640, 480)  # width, height of the photos sent
PHOTO_MODEL_SIDE = 224
#: Distinct photos generated; repeated, each message with its own id, up to --photo-images.
PHOTO_DISTINCT = 48
CACHE = REPO / "benchmarks" / ".cache"


def mobilenet_v2_onnx(path: Path, side: int = PHOTO_MODEL_SIDE, classes: int = 1000, seed: int = 0) -> Path:
    """MobileNetV2's graph (Sandler et al. 2018, width 1.0: inverted residual blocks, ReLU6,
    about 300 M multiply-adds at 224x224) with random weights, as ONNX with vectorai's metadata
    and NHWC input; built with onnx.helper once and kept at ``path``. Speed, not accuracy: what
    a photo model costs per image."""
    if path.is_file():
        return path
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vectorai.inference import META_CLASS_NAMES, META_PREPROCESS, META_VERSION

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    weights: list[Any] = [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                          numpy_helper.from_array(np.array(6, np.float32), "six")]

    def conv(x: str, cin: int, cout: int, kernel: int, stride: int, group: int = 1, relu6: bool = True) -> str:
        name = f"conv{len(nodes)}"
        fan_in = kernel * kernel * cin // group
        weights.append(numpy_helper.from_array(
            rng.normal(0, (1.0 / fan_in) ** 0.5, (cout, cin // group, kernel, kernel)).astype(np.float32), name + ".w"))
        weights.append(numpy_helper.from_array(np.zeros(cout, np.float32), name + ".b"))
        nodes.append(helper.make_node("Conv", [x, name + ".w", name + ".b"], [name], kernel_shape=[kernel, kernel],
                                      strides=[stride, stride], pads=[kernel // 2] * 4, group=group))
        if not relu6:
            return name
        nodes.append(helper.make_node("Clip", [name, "zero", "six"], [name + ".relu6"]))
        return name + ".relu6"

    nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
    x, channels = conv("nchw", 3, 32, 3, 2), 32
    for expansion, out, repeats, first_stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            hidden = channels * expansion
            h = conv(x, channels, hidden, 1, 1) if expansion != 1 else x
            h = conv(h, hidden, hidden, 3, stride, group=hidden)
            h = conv(h, hidden, out, 1, 1, relu6=False)
            if stride == 1 and channels == out:
                nodes.append(helper.make_node("Add", [x, h], [h + ".add"]))
                h += ".add"
            x, channels = h, out
    x = conv(x, channels, 1280, 1, 1)
    weights.append(numpy_helper.from_array(rng.normal(0, 0.03, (1280, classes)).astype(np.float32), "fc.w"))
    weights.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
              helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "mobilenet_v2_random",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", side, side, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in ((META_CLASS_NAMES, json.dumps([f"class{i}" for i in range(classes)])),
                       (META_PREPROCESS, json.dumps({"height": side, "width": side, "channels": 3})),
                       (META_VERSION, "mobilenetv2-random")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    onnx.save(model, str(partial))
    partial.replace(path)  # never a half-written model in the cache
    return path


def make_photos(count: int, seed: int = 0) -> list[bytes]:
    """``count`` photo-like 640x480 JPEGs (quality 85): smooth shapes of colour and sensor grain,
    which compress and decode like photographs do (pure noise would not)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(PHOTO_SIZE, Image.BICUBIC), dtype=np.float32)
        grainy = np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grainy).save(buffer, format="JPEG", quality=85)
        photos.append(buffer.getvalue())
    return photos


def publish_photos(root: Path, topic: str, photos: list[bytes], count: int) -> None:
    from vectorai.transports import open_transport
    from vectorai.transports.base import OutgoingMessage

    with open_transport("local", root=root, topic=topic) as producer:
        producer.publish(OutgoingMessage(photos[i % len(photos)], {"id": f"photo-{i}", "content-type": "image/jpeg"})
                         for i in range(count))
        producer.flush(120)


def decode_cpu_ms(photos: list[bytes], spec, jpeg_draft: bool, count: int = 200) -> float:
    """CPU milliseconds (this thread) per photo to decode and preprocess it to what the model
    takes (8-bit at its size, then scaled to float): the loop's per-message work."""
    from vectorai.messages import decode_messages
    from vectorai.preprocess import as_model_input, stack_if_uniform
    from vectorai.transports.base import ReceivedMessage

    messages = [ReceivedMessage(source="bench", payload=photos[i % len(photos)], position=str(i),
                                attributes={"id": f"p{i}", "content-type": "image/jpeg"}) for i in range(count)]
    decode_messages(messages[:4], spec=spec, jpeg_draft=jpeg_draft)  # warm-up: imports, Pillow's plugins
    scratch = np.empty((32, spec.height, spec.width, spec.channels), np.float32)  # as OnnxClassifier keeps one
    started = time.thread_time()
    for start in range(0, count, 32):
        decoded = decode_messages(messages[start:start + 32], spec=spec, jpeg_draft=jpeg_draft)
        pixels = stack_if_uniform(decoded.images)
        as_model_input(pixels, out=scratch[:len(pixels)])
    return round((time.thread_time() - started) * 1000 / count, 3)


def draft_agreement(model_file: Path, count: int) -> dict[str, Any]:
    """Top-1 of the digits model on ``count`` mnist-sample digits upscaled to 640x480 JPEGs,
    decoded in JPEG draft mode and in full: how often the two agree, and each one's accuracy."""
    from PIL import Image

    from vectorai.inference import OnnxClassifier
    from vectorai.messages import decode_messages
    from vectorai.preprocess import preprocess_images
    from vectorai.transports.base import ReceivedMessage

    classifier = OnnxClassifier(model_file)
    images, labels = load_images(count)
    messages = []
    for i, digit in enumerate(images):
        photo = Image.fromarray(digit).resize(PHOTO_SIZE, Image.BICUBIC).convert("RGB")
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=85)
        messages.append(ReceivedMessage(source="bench", payload=buffer.getvalue(), position=str(i),
                                        attributes={"id": f"d{i}", "content-type": "image/jpeg"}))
    classes = {}
    for draft in (True, False):
        decoded = decode_messages(messages, spec=classifier.spec, jpeg_draft=draft)
        if decoded.failures:
            raise RuntimeError(f"draft check: {decoded.failures[0][1]}")
        classes[draft] = classifier.predict_proba(preprocess_images(decoded.images, classifier.spec)).argmax(axis=1)
    return {"images": count, "model": str(model_file),
            "agreement": round(float((classes[True] == classes[False]).mean()), 4),
            "accuracy_draft": round(float((classes[True] == labels).mean()), 4),
            "accuracy_full": round(float((classes[False] == labels).mean()), 4)}


def run_photos(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The photos case: ``--photo-images`` 640x480 JPEGs on the local queue, classified into SQLite
    by a fresh process (PredictTask's library calls) by a MobileNetV2-sized model at 224x224,
    against that model's raw onnxruntime ceiling measured right before and after it."""
    from vectorai.inference import OnnxClassifier, available_cores
    from vectorai.predict import CHUNK
    from vectorai.preprocess import fit_uint8, preprocess_images

    count = args.photo_images
    model_file = mobilenet_v2_onnx(Path(args.cache) / f"mobilenetv2-{PHOTO_MODEL_SIDE}.onnx")
    photos = make_photos(min(PHOTO_DISTINCT, count))
    log(f"photos: {count} {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs ({sum(map(len, photos)) // len(photos) // 1024} KiB "
        f"each on average), model {model_file.name}, batch size {args.batch_size}, {available_cores()} CPUs")
    spec = OnnxClassifier(model_file, threads=1).spec
    result: dict[str, Any] = {
        "images": count, "batch_size": args.batch_size, "cpus": available_cores(), "model": str(model_file),
        "jpeg_bytes_mean": round(sum(map(len, photos)) / len(photos)),
        "decode_cpu_ms_per_photo": {"jpeg_draft": decode_cpu_ms(photos, spec, True),
                                    "full_decode": decode_cpu_ms(photos, spec, False)},
    }
    log(f"photos: decode+preprocess CPU per photo {result['decode_cpu_ms_per_photo']['jpeg_draft']} ms "
        f"(draft), {result['decode_cpu_ms_per_photo']['full_decode']} ms (full decode)")
    with tempfile.TemporaryDirectory(prefix="vectorai-photos-") as folder:
        workdir = Path(folder)
        # The ceiling: onnxruntime on these photos already preprocessed, at its fastest way.
        from PIL import Image

        def pixels(payload: bytes) -> np.ndarray:
            with Image.open(io.BytesIO(payload)) as photo:
                return fit_uint8(photo, spec.height, spec.width, spec.channels)

        # Enough images that every core has chunks of its own when they are classified side by side.
        ceiling_images = CHUNK * available_cores() if args.tiny else max(256, 2 * CHUNK * available_cores())
        distinct = [pixels(photo) for photo in photos]
        batch = preprocess_images(np.stack([distinct[i % len(distinct)] for i in range(ceiling_images)]), spec)
        ways = ceiling_ways(model_file, CHUNK, args.threads)
        ceiling_runs: dict[str, float] = {}

        def ceiling(when: str) -> float:
            """The fastest way, each the best of a few passes (one with --tiny)."""
            for label, (classifier, size, workers) in ways.items():
                ceiling_runs[f"{when}, {label}"] = round(measure_raw_onnxruntime(
                    classifier, batch, size, repeats=1 if args.tiny else 3, workers=workers).rate, 1)
            return max(rate for name, rate in ceiling_runs.items() if name.startswith(when))

        log(f"photos: {RAW} before {ceiling('before'):,.1f} images/s")
        # The end-to-end run as often as --photo-runs, a ceiling between each two: the ceiling is
        # the best of several passes, so one end-to-end run against it would be judged on this
        # shared machine's slowest stretches; its best run is set against the best ceiling.
        runs = []
        for run in range(args.photo_runs):
            topic = f"photos{run}"
            publish_photos(workdir / "queues", topic, photos, count)
            runs.append(_run_worker(
                ["photos", "--model", str(model_file), "--queue-root", str(workdir / "queues"), "--topic", topic,
                 "--database", str(workdir / f"{topic}.sqlite"), "--batch-size", str(args.batch_size),
                 "--decode-threads", str(args.decode_threads)]
                + (["--threads", str(args.threads)] if args.threads else [])
                + ([] if args.jpeg_draft else ["--no-jpeg-draft"])))
            ceiling(f"between {run + 1}" if run + 1 < args.photo_runs else "after")
        del batch, ways
    ceiling = max(ceiling_runs.values())
    rates = [out["consumed"] / out["seconds"] if out["seconds"] > 0 else 0.0 for out in runs]
    out = runs[rates.index(max(rates))]
    rate = max(rates)
    result.update({
        "images_per_second": round(rate, 1), "ceiling_beside_images_per_second": round(ceiling, 1),
        "ratio_to_ceiling_beside": round(rate / ceiling, 4) if ceiling else None,
        "median_ratio_to_ceiling_beside": round(statistics.median(rates) / ceiling, 4) if ceiling else None,
        "runs": [{"images_per_second": round(r, 1),
                  "cpu_seconds_per_1000_images": round(o["cpu_seconds"] * 1000 / max(o["consumed"], 1), 3),
                  "peak_rss_mib": round(o["peak_rss_kib"] / 1024, 1)} for r, o in zip(rates, runs)],
        "ceiling_runs": ceiling_runs, "predicted": out["predicted"], "dead_letters": out["dead_letters"],
        "cpu_seconds_per_1000_images": round(out["cpu_seconds"] * 1000 / max(out["consumed"], 1), 3),
        # Memory is a bound, not a speed: the highest of every run.
        "peak_rss_mib": round(max(o["peak_rss_kib"] for o in runs) / 1024, 1), "decode_threads": out["decode_threads"],
        "jpeg_draft": args.jpeg_draft,
    })
    log(f"photos: predict local+sqlite {rate:,.1f} images/s (best of {len(runs)}: "
        f"{', '.join(f'{r:,.1f}' for r in rates)}), {result['ratio_to_ceiling_beside']} of the ceiling "
        f"beside it ({ceiling:,.1f}; median run {result['median_ratio_to_ceiling_beside']}), CPU "
        f"{result['cpu_seconds_per_1000_images']} s per 1,000, peak RSS {result['peak_rss_mib']} MiB")
    if args.draft_check:
        digits_model = find_model(args.model, Path(tempfile.mkdtemp(prefix="vectorai-bench-")), log) / "model.onnx"
        result["draft_agreement"] = draft_agreement(digits_model, args.draft_check)
        log(f"photos: JPEG draft vs full decoding, digits upscaled to 640x480: top-1 agreement "
            f"{result['draft_agreement']['agreement']:.2%}")
    result["targets"] = {
        ">= 0.80 of the ceiling beside it": result["ratio_to_ceiling_beside"] is not None
        and result["ratio_to_ceiling_beside"] >= 0.80,
        "peak RSS <= 600 MB": result["peak_rss_mib"] * 1024 * 1024 <= 600e6,
        "decode+preprocess <= 1.5 ms CPU per photo": result["decode_cpu_ms_per_photo"]["jpeg_draft"] <= 1.5,
        **({"draft top-1 agreement >= 99.5 %": result["draft_agreement"]["agreement"] >= 0.995}
           if "draft_agreement" in result else {}),
    }
    return result


def format_photos(photos: dict[str, Any]) -> str:
    lines = [f"photos ({photos['images']:,} {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs, MobileNetV2-sized model at "
             f"{PHOTO_MODEL_SIDE}x{PHOTO_MODEL_SIDE}, batch {photos['batch_size']}, {photos['cpus']} CPUs, "
             f"{photos['decode_threads']} decode threads): "
             f"{photos['images_per_second']:,.1f} images/s (best of {len(photos['runs'])} runs), "
             f"{photos['ratio_to_ceiling_beside']:.3f} of the ceiling beside it "
             f"({photos['ceiling_beside_images_per_second']:,.1f}; median run "
             f"{photos['median_ratio_to_ceiling_beside']:.3f}); CPU "
             f"{photos['cpu_seconds_per_1000_images']} s per 1,000 images; peak RSS {photos['peak_rss_mib']} MiB",
             f"photos: decode+preprocess CPU per photo {photos['decode_cpu_ms_per_photo']['jpeg_draft']} ms with JPEG "
             f"draft, {photos['decode_cpu_ms_per_photo']['full_decode']} ms decoding in full"]
    if "draft_agreement" in photos:
        check = photos["draft_agreement"]
        lines.append(f"photos: JPEG draft vs full decoding on {check['images']:,} digits upscaled to 640x480: top-1 "
                     f"agreement {check['agreement']:.2%} (accuracy {check['accuracy_draft']:.2%} vs "
                     f"{check['accuracy_full']:.2%})")
    for name, met in photos["targets"].items():
        lines.append(f"target photos {name}: {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def run_scaling(args: argparse.Namespace, argv: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The photos case once per core count in ``--cores``, each in a fresh process pinned with
    ``taskset`` to the first N cores: how images/s grows against the raw ceiling."""
    rows = []
    if shutil.which("taskset") is None:
        raise SystemExit("--cores needs taskset (util-linux) to pin each run to its cores")
    passed = _drop_values(argv, ("--cores", "--json", "--cases", "--draft-check"))
    for cores in [int(c) for c in args.cores.split(",") if c.strip()]:
        if cores > (os.cpu_count() or 1):
            log(f"scaling: skipping {cores} cores, this machine has {os.cpu_count()}")
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = ["taskset", "-c", f"0-{cores - 1}", sys.executable, str(Path(__file__).resolve()), *passed,
                       "--cases", "photos", "--draft-check", "0", "--json", out.name, "--quiet"]
            log(f"scaling: {' '.join(command[:4])} ... on {cores} cores")
            proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise RuntimeError(f"{cores} cores failed:\n{proc.stderr[-3000:]}")
            photos = json.loads(Path(out.name).read_text())["photos"]
        rows.append({"cores": cores, **{key: photos[key] for key in (
            "images_per_second", "ceiling_beside_images_per_second", "ratio_to_ceiling_beside",
            "median_ratio_to_ceiling_beside", "cpu_seconds_per_1000_images", "peak_rss_mib", "decode_threads")},
            "decode_cpu_ms_per_photo": photos["decode_cpu_ms_per_photo"]["jpeg_draft"]})
        log(f"scaling: {cores} cores: {photos['images_per_second']:,.1f} images/s, ceiling "
            f"{photos['ceiling_beside_images_per_second']:,.1f}")
    return {"images": args.photo_images, "batch_size": args.batch_size, "rows": rows}


def _drop_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--x v`` or ``--x=v``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept


def format_scaling(scaling: dict[str, Any]) -> str:
    rows = [("cores", "images/s", "raw ORT beside", "x beside", "vs 1 core", "ceiling vs 1 core", "CPU s/1000",
             "peak RSS MiB", "decode threads")]
    first = scaling["rows"][0] if scaling["rows"] else None
    for row in scaling["rows"]:
        rows.append((str(row["cores"]), f"{row['images_per_second']:,.1f}",
                     f"{row['ceiling_beside_images_per_second']:,.1f}", f"{row['ratio_to_ceiling_beside']:.3f}",
                     f"{row['images_per_second'] / first['images_per_second']:.2f}",
                     f"{row['ceiling_beside_images_per_second'] / first['ceiling_beside_images_per_second']:.2f}",
                     f"{row['cpu_seconds_per_1000_images']:.2f}", f"{row['peak_rss_mib']:.1f}",
                     str(row["decode_threads"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return f"photos scaling ({scaling['images']:,} JPEGs, batch {scaling['batch_size']}, taskset):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000, help="How many images (default 30000)")
    parser.add_argument("--batch-size", type=int, default=256, help="Messages per batch, as PredictTask's "
                        "predict_batch_size (default 256)")
    parser.add_argument("--tiny", action="store_true", help="A few hundred images and a short Keras "
                        "baseline: checks that the script runs, measures nothing meaningful")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="Comma-separated: local,kafka,pubsub")
    parser.add_argument("--databases", default=",".join(DATABASES), help="Comma-separated: sqlite,postgres")
    parser.add_argument("--encodings", default="png,raw", help="Comma-separated message encodings to "
                        "measure, as [stream] encoding: png (StreamData's default), raw (ndarray), jpeg "
                        "(default png,raw); peak memory uses the first")
    parser.add_argument("--model", help="Exported model dir (with model.onnx); default: newest models/*/onnx, "
                        "else a quick model trained here")
    parser.add_argument("--baseline-model", help="Another exported model dir (e.g. the previous default): its raw "
                        "onnxruntime ceiling is measured too, in passes alternating with the model's on the same "
                        "images, with the ratio model/baseline")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads "
                        "(default: the library's choice)")
    parser.add_argument("--no-keras", dest="keras", action="store_false", help="Skip the Keras baseline")
    parser.add_argument("--keras-per-image", type=int, default=200, help="Images for the slow per-image "
                        "Keras baseline (default 200)")
    parser.add_argument("--timeout-ms", type=int, default=2000, help="Empty wait that ends a drain (not timed)")
    parser.add_argument("--cases", default="digits", help="Comma-separated: digits (every case above, on MNIST "
                        "digits; the default) and photos (640x480 JPEGs into a MobileNetV2-sized model at 224x224)")
    parser.add_argument("--photo-images", type=int, default=1000, help="Photos for the photos case (default 1000)")
    parser.add_argument("--photo-runs", type=int, default=3, help="Photos: end-to-end runs, a ceiling between "
                        "each two; the best is set against the best ceiling, the median reported too (default 3)")
    parser.add_argument("--decode-threads", type=int, default=0, help="The photos case's decoding threads "
                        "(default 0: the library's choice)")
    parser.add_argument("--no-jpeg-draft", dest="jpeg_draft", action="store_false", help="Photos: decode in full")
    parser.add_argument("--draft-check", type=int, default=1000, help="Photos: digits upscaled to 640x480 JPEGs on "
                        "which the digits model's top-1 with JPEG draft mode is compared with full decoding "
                        "(default 1000; 0: skip)")
    parser.add_argument("--cores", help="Photos: run the case once per core count, e.g. 1,2,4,8,16, each in a "
                        "fresh process under taskset on the first N cores, and print one table")
    parser.add_argument("--cache", default=str(CACHE), help="Where the MobileNetV2-sized model is built once "
                        "(default benchmarks/.cache)")
    parser.add_argument("--json", help="Also write the JSON summary to this file")
    parser.add_argument("--quiet", action="store_true", help="No progress lines on stderr")
    args = parser.parse_args(argv)
    if args.tiny:
        args.images = min(args.images, 300)
        args.batch_size = min(args.batch_size, 32)
        args.keras_per_image = min(args.keras_per_image, 10)
        args.photo_images = min(args.photo_images, 64)
        args.photo_runs = min(args.photo_runs, 2)
        args.draft_check = min(args.draft_check, 50)
    if args.photo_runs < 1:
        parser.error("--photo-runs must be at least 1")
    cases = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases or cases - {"digits", "photos"}:
        parser.error("--cases: choose from digits, photos")
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be positive")

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if args.cores:
        summary: dict[str, Any] = {"photos_scaling": run_scaling(args, argv, log)}
        print(format_scaling(summary["photos_scaling"]))
    else:
        summary = run(args, log) if "digits" in cases else {}
        if "digits" in cases:
            print(format_table(summary))
        if "photos" in cases:
            summary["photos"] = run_photos(args, log)
            print(format_photos(summary["photos"]))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
