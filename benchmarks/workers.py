"""The throughput benchmark's subprocess workers (``throughput.py --worker JOB``): TensorFlow and
the memory measurements stay out of the measuring process, each in a fresh one."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.inputs import load_images

REPO = Path(__file__).resolve().parent.parent
#: The command line that runs a worker when given ``--worker``.
SCRIPT = Path(__file__).resolve().parent / "throughput.py"


def run_worker(args: list[str]) -> dict[str, Any]:
    """Run ``throughput.py --worker *args`` in a fresh process; the JSON line it prints last."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--worker", *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    run_worker(["train", "--out", str(out)])
    return out / "onnx"


def worker_main(argv: list[str]) -> int:
    """``--worker JOB ...``: do the job, print its result as one JSON line."""
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
        result = _memory_worker(args)
    print(json.dumps(result))
    return 0


def _drain(args: argparse.Namespace, **options: Any):
    """PredictTask's run over the local queue into SQLite, in this process: its report and the
    CPU seconds (every thread) it took."""
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
                                 **options)
    cpu = time.process_time() - cpu
    database.close()
    return report, cpu


def _memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    report, _ = _drain(args)
    return {"consumed": report.consumed, "predicted": report.predicted + report.already_predicted,
            "dead_letters": report.dead_letters, "peak_rss_kib": _peak_rss_kib(),
            "final_rss_kib": _proc_status_kib("VmRSS")}


def _photos_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The photos: throughput, CPU (every thread) and peak memory of this fresh process."""
    report, cpu = _drain(args, decode_threads=args.decode_threads or None, jpeg_draft=args.jpeg_draft)
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

    from vectorai.export import HeldOut, export_onnx
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
                spec=spec, model_version="benchmark-quick", check=HeldOut(x[:500], labels[:500]),
                validation=HeldOut(x[500:1000], labels[500:1000]), tolerance=1e-4)
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
