"""Throughput of the prediction path, measured in one run on one machine on the same images.

    python benchmarks/throughput.py                       # 30,000 images, every transport and database
    python benchmarks/throughput.py --transports local --databases sqlite --images 5000
    python benchmarks/throughput.py --tiny --json out.json
    python benchmarks/throughput.py --cases photos --cores 1,2,4,8,16

What it measures (each as images/s and as a ratio to the raw onnxruntime figure):

1. raw onnxruntime on preprocessed in-memory batches: the ceiling (``benchmarks/ceiling.py``);
2. the whole PredictTask path (consume -> decode -> preprocess -> infer -> insert -> commit ->
   acknowledge) per transport and database, through the same library calls PredictTask makes
   (``benchmarks/digits.py``, ``benchmarks/backends.py``);
3. StreamData's publishing rate per transport (``vectorai.streaming.publish_images``);
4. Keras ``model.predict`` per image and per batch (when the model's ``keras/model.keras`` exists);
5. PredictTask's peak memory (ru_maxrss of a fresh process) for one batch of messages and for ten,
   and for one batch of hostile ones: 4096x4096 RGBA PNGs (64 KiB each on the wire, 64 MiB of
   pixels each), which must stay under 1 GiB with every message predicted or dead-lettered; and
   for 64 noise PNGs of 8 MiB each with the default byte budget (4 with ``--tiny``), which must
   stay under 600 MiB with every one predicted (``benchmarks/memory.py``).

``--cases photos`` measures photos instead (``benchmarks/photos.py``): 640x480 JPEGs into a
MobileNetV2-sized model at 224x224 on the local queue and SQLite, against that model's ceiling;
``--cores 1,2,4`` runs that case once per core count under taskset and prints one table
(``benchmarks/scaling.py``).

The images are real MNIST digits (the ``mnist-sample`` built-in) repeated to ``--images`` with
unique ids. Services it needs are taken from KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL /
PUBSUB_EMULATOR_HOST, else started here as private ones (``services.private``, as the test
fixtures start theirs) and stopped at the end. This is a measurement, not a test: nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script, `python benchmarks/throughput.py`, from anywhere
    if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
        sys.path.pop(0)  # this folder's modules are imported as benchmarks.*, never as top-level ones
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

from benchmarks.backends import DATABASES, TRANSPORTS  # noqa: E402 - needs the path above
from benchmarks.photos import CACHE  # noqa: E402
from benchmarks.report import format_photos, format_scaling, format_table  # noqa: E402


def _digits_options(parser: argparse.ArgumentParser) -> None:
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


def _photos_options(parser: argparse.ArgumentParser) -> None:
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


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, set[str]]:
    """The options, with --tiny applied, and the cases asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _digits_options(parser)
    _photos_options(parser)
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
    return args, cases


def measure(args: argparse.Namespace, cases: set[str], argv: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the cases asked for, printing each one's table as it ends; the JSON summary."""
    if args.cores:
        from benchmarks.scaling import run_scaling

        summary: dict[str, Any] = {"photos_scaling": run_scaling(args, argv, log)}
        print(format_scaling(summary["photos_scaling"]))
        return summary
    summary = {}
    if "digits" in cases:
        from benchmarks.digits import run

        summary = run(args, log)
        print(format_table(summary))
    if "photos" in cases:
        from benchmarks.photos import run_photos

        summary["photos"] = run_photos(args, log)
        print(format_photos(summary["photos"]))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        from benchmarks.workers import worker_main

        return worker_main(argv[1:])
    args, cases = parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    text = json.dumps(measure(args, cases, argv, log), indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
