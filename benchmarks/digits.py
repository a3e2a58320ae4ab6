"""The digits cases: real MNIST digits through every transport and database asked for, set
against the raw onnxruntime ceiling measured at the start, beside each case and at the end;
StreamData's publishing rate, the Keras baseline and the memory section."""

from __future__ import annotations

import argparse
import platform
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from benchmarks.backends import (DATABASES, TRANSPORTS, Databases, Services, available, cpu_per_thousand,
                                 open_consumers, predict_end_to_end, process_cpu, publish, transport_settings)
from benchmarks.ceiling import CeilingBeside, ceiling_ways, compare_ceilings, measure_ceiling
from benchmarks.inputs import load_images
from benchmarks.memory import BYTES_BUDGET_MIB, LARGE_BUDGET_MIB, LARGE_SIDE, measure_all
from benchmarks.report import RAW, Case, target
from benchmarks.workers import find_model, run_worker

ENCODINGS = ("png", "raw", "jpeg")


def chosen(value: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    """The comma-separated names of ``value``; SystemExit naming ``option`` for an unknown one."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if name not in allowed:
            raise SystemExit(f"{option}: unknown {name!r}; choose from {', '.join(allowed)}")
    return names


def failure(err: BaseException) -> str:
    return f"failed: {type(err).__name__}: " + (str(err).strip().splitlines() or [""])[0][:300]


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Every digits case; the JSON summary."""
    encodings = chosen(args.encodings, "--encodings", ENCODINGS)
    transports = chosen(args.transports, "--transports", TRANSPORTS)
    databases = chosen(args.databases, "--databases", DATABASES)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vectorai-bench-")))
        services = Services(log)
        stack.callback(services.stop_started)
        dbs = Databases(services, workdir)
        stack.callback(dbs.drop_created)
        digits = DigitsRun(args, log, workdir, services, dbs, encodings)
        digits.first_ceiling()  # 1. the ceiling
        for encoding, transport in ((e, t) for e in encodings for t in transports):
            digits.through(transport, encoding, databases)  # 2 + 3. publish, then predict per database
        digits.last_ceiling()
        digits.keras()  # 4. the Keras baseline
        # 5. memory for 1x and 10x one batch of messages, huge PNGs and 8 MiB ones
        memory = measure_all(digits.model_dir, workdir, digits.images, digits.labels, encodings[0],
                             args.batch_size, args.threads, args.tiny, log)
    return digits.summary(memory)


class DigitsRun:
    """The digits cases of one run, measured step by step into ``cases`` and ``skipped``."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None], workdir: Path, services: Services,
                 dbs: Databases, encodings: list[str]) -> None:
        from vectorai.inference import available_cores

        self.args, self.log, self.workdir, self.services, self.dbs = args, log, workdir, services, dbs
        self.encodings = encodings
        self.images, self.labels = load_images(args.images)
        self.model_dir = find_model(args.model, workdir, log)
        self.model_file = self.model_dir / "model.onnx"
        self.baseline_file = None
        if args.baseline_model:
            self.baseline_file = find_model(args.baseline_model, workdir, log) / "model.onnx"
        # The ceiling is onnxruntime at its best on this machine, whichever of ceiling_ways is fastest.
        self.ways = ceiling_ways(self.model_file, args.batch_size, args.threads)
        log(f"{len(self.images)} images, batch size {args.batch_size}, model {self.model_dir}, "
            f"encodings {', '.join(encodings)}, {available_cores()} CPUs")
        self.cases: list[Case] = []
        self.skipped: dict[str, str] = {}
        self.raw_runs: dict[str, float] = {}
        self.comparison: dict[str, Any] | None = None

    def first_ceiling(self) -> None:
        """The ceiling at the start, and against the --baseline-model's in alternating passes."""
        from vectorai.preprocess import preprocess_images

        self.batch = preprocess_images(self.images, next(iter(self.ways.values()))[0].spec)
        self.raw = measure_ceiling(self.ways, self.batch, "first", self.raw_runs)
        self.cases.append(self.raw)
        self.log(f"{RAW}: {self.raw.rate:,.0f} images/s")
        if self.baseline_file is not None:
            baseline_ways = ceiling_ways(self.baseline_file, self.args.batch_size, self.args.threads)
            self.comparison = compare_ceilings(self.ways, baseline_ways, self.batch)
            self.comparison.update(model=str(self.model_dir), baseline=str(self.baseline_file.parent))
            self.log(f"{RAW}, this model vs --baseline-model: {self.comparison['images_per_second']:,.0f} vs "
                     f"{self.comparison['baseline_images_per_second']:,.0f} images/s (x{self.comparison['ratio']:.3f})")
        self.beside = CeilingBeside(self.ways, self.batch, self.raw_runs)

    def last_ceiling(self) -> None:
        """The ceiling again: on a machine shared with the services, the best of every measurement
        is the honest (harder to reach) figure for the run."""
        again = measure_ceiling(self.ways, self.batch, "last", self.raw_runs)
        self.log(f"{RAW} again: {again.rate:,.0f} images/s")
        self.raw.extra.update(images_per_second_per_run=self.raw_runs)
        self.raw.seconds = self.raw.images / max(self.raw_runs.values())  # the highest, beside the cases included
        self.ways = self.batch = self.beside = None  # the sessions and pixels are not needed any more

    def through(self, transport: str, encoding: str, databases: list[str]) -> None:
        """Publish once to ``transport``, then drain it once per database (each in its own consumer
        group / subscription, into its own fresh database); on the local queue also with a shadow."""
        published = self._publish(transport, encoding, databases)
        if published is None:
            return
        topic, groups = published
        for db in databases:
            self._predict(transport, db, encoding, topic, groups[db])
        if transport == "local" and "sqlite" in databases:
            self._shadow(encoding, topic)

    def _settings(self, transport: str, topic: str, group: str) -> dict[str, Any]:
        return transport_settings(transport, self.services, self.workdir, topic, group)

    def _publish(self, transport: str, encoding: str, databases: list[str]) -> tuple[str, dict[str, str]] | None:
        names = [f"publish {transport} ({encoding})"] + [f"predict {transport}+{db} ({encoding})" for db in databases]
        reason = available(transport, "sqlite", self.services)
        if reason:
            self.skipped.update(dict.fromkeys(names, reason))
            return None
        topic = f"bench-{transport}-{uuid.uuid4().hex[:8]}"
        groups = {db: f"bench-{db}-{uuid.uuid4().hex[:8]}" for db in databases}
        try:
            open_consumers(transport, self.services, self.workdir, topic, list(groups.values()))
            # The publisher names the first consumer's subscription: Pub/Sub needs one.
            seconds = publish(transport, self._settings(transport, topic, groups[databases[0]]), self.images,
                              self.labels, encoding)
        except Exception as err:  # noqa: BLE001 - one failed service must not lose the run
            self.skipped.update(dict.fromkeys(names, failure(err)))
            self.log(f"{names[0]} failed: {failure(err)}")
            return None
        self.cases.append(Case(names[0], "publish", len(self.images), seconds,
                               {"transport": transport, "encoding": encoding}))
        self.log(f"{names[0]}: {self.cases[-1].rate:,.0f} images/s")
        return topic, groups

    def _predict(self, transport: str, db: str, encoding: str, topic: str, group: str) -> None:
        name = f"predict {transport}+{db} ({encoding})"
        reason = available(transport, db, self.services)
        if reason:
            self.skipped[name] = reason
            return
        args = self.args
        try:
            url = self.dbs.fresh_url(db, f"{transport}-{encoding}")
            cpu_before = process_cpu(self.services, transport, db)
            report = predict_end_to_end(transport, self._settings(transport, topic, group), url, self.model_file,
                                        args.batch_size, args.threads, args.timeout_ms)
            cpu = cpu_per_thousand(cpu_before, process_cpu(self.services, transport, db), report.consumed)
        except Exception as err:  # noqa: BLE001 - one failed service must not lose the run
            self.skipped[name] = failure(err)
            self.log(f"{name} failed: {failure(err)}")
            return
        accuracy = round(report.correct / report.labelled, 4) if report.labelled else None
        case = self._end_to_end(name, transport, db, encoding, report, {"accuracy": accuracy},
                                {"cpu_seconds_per_1000_images": cpu} if cpu else {})
        self.log(f"{name}: {case.rate:,.0f} images/s ({report.predicted} rows), "
                 f"ceiling beside it {case.extra['ceiling_beside_images_per_second']:,.0f}"
                 + (f"; CPU s per 1,000 images: {', '.join(f'{k} {v}' for k, v in cpu.items())}" if cpu else ""))

    def _shadow(self, encoding: str, topic: str) -> None:
        """Shadow scoring's cost: the same drain, with the model shadowing itself."""
        name = f"predict local+sqlite ({encoding}) + shadow"
        args = self.args
        report = predict_end_to_end(
            "local", self._settings("local", topic, f"bench-shadow-{encoding}"),
            self.dbs.fresh_url("sqlite", f"shadow-{encoding}"), self.model_file, args.batch_size,
            args.threads, args.timeout_ms, shadow_path=self.model_file)
        case = self._end_to_end(name, "local", "sqlite", encoding, report,
                                {"shadow_agreement": report.to_dict()["shadow"]["agreement"]}, {})
        self.log(f"{name}: {case.rate:,.0f} images/s")

    def _end_to_end(self, name: str, transport: str, db: str, encoding: str, report, measured: dict[str, Any],
                    after: dict[str, Any]) -> Case:
        """The case of a drain that has just ended, with the ceiling measured beside it."""
        self.cases.append(Case(name, "end to end", report.consumed, report.seconds, {
            "transport": transport, "database": db, "encoding": encoding,
            "predicted": report.predicted, "dead_letters": report.dead_letters, "batches": report.batches,
            **measured, "ceiling_beside_images_per_second": self.beside.after_case(), **after}))
        return self.cases[-1]

    def keras(self) -> None:
        """Keras ``model.predict`` per image and per batch, in a subprocess so TensorFlow never
        shares this process."""
        args = self.args
        keras_path = self.model_dir.parent / "keras" / "model.keras"
        if not (args.keras and keras_path.is_file()):
            self.skipped["keras predict"] = "disabled" if not args.keras else f"no Keras model at {keras_path}"
            return
        out = run_worker(["keras", "--model", str(keras_path), "--images", str(min(args.images, 10000)),
                          "--per-image", str(args.keras_per_image), "--batch-size", str(args.batch_size)])
        self.cases.append(Case("keras predict per image", "baseline", out["per_image"]["images"],
                               out["per_image"]["seconds"]))
        self.cases.append(Case("keras predict per batch", "baseline", out["per_batch"]["images"],
                               out["per_batch"]["seconds"], {"batch_size": args.batch_size}))
        self.log(f"keras per image: {self.cases[-2].rate:,.1f} images/s, per batch: {self.cases[-1].rate:,.0f} images/s")

    def summary(self, memory: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime

        from vectorai.inference import available_cores

        raw_rate = self.raw.rate
        results = [case.to_dict(raw_rate) for case in self.cases]
        return {
            "machine": {"cpus": available_cores(), "platform": platform.platform(),
                        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
            "images": len(self.images),
            "batch_size": self.args.batch_size,
            "encodings": self.encodings,
            "model": str(self.model_dir),
            "raw_onnxruntime_images_per_second": round(raw_rate, 1),
            "results": results,
            "skipped": self.skipped,
            "memory": memory,
            "targets": targets({r["case"]: r for r in results}, self.encodings, memory),
            "targets_judged_against": "the ceiling measured beside each case (ratio_to_ceiling_beside)",
            **({"baseline_model": self.comparison} if self.comparison else {}),
        }


def targets(by_name: dict[str, dict[str, Any]], encodings: list[str], memory: dict[str, Any]) -> dict[str, Any]:
    """The digits run's targets: met (True), not met (False) or not measured (None)."""
    large, noise = memory["large"], memory["bytes"]
    return {
        **{f"kafka+postgres ({e}) >= 40% of raw": target(by_name.get(f"predict kafka+postgres ({e})"), 0.40)
           for e in encodings},
        **{f"local+sqlite ({e}) >= 50% of raw": target(by_name.get(f"predict local+sqlite ({e})"), 0.50)
           for e in encodings},
        "peak memory 10x within 10% of 1x": abs(memory["growth"]) <= 0.10,
        f"peak memory of {LARGE_SIDE}x{LARGE_SIDE} PNGs under {LARGE_BUDGET_MIB} MiB, each predicted or "
        f"dead-lettered": large["peak_rss_mib"] < LARGE_BUDGET_MIB
        and large["consumed"] == large["messages"] == large["predicted"] + large["dead_letters"],
        f"peak memory of 8 MiB PNGs under {BYTES_BUDGET_MIB} MiB, every one predicted":
        noise["peak_rss_mib"] < BYTES_BUDGET_MIB and noise["predicted"] == noise["messages"],
    }
