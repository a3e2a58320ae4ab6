"""The ceiling every end-to-end figure is set against: raw onnxruntime on already preprocessed
in-memory batches, in whichever of a few ways is fastest on this machine."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from benchmarks.report import RAW, Case

#: label -> (classifier, images per call, side-by-side workers)
Ways = dict[str, tuple[Any, int, int]]


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
        take = take_each_once(starts)
        with ThreadPoolExecutor(max_workers=max(workers - 1, 1)) as pool:
            started = time.perf_counter()
            others = [pool.submit(classify, take) for _ in range(workers - 1)]
            classify(take)
            for other in others:
                other.result()  # a worker's error fails the measurement instead of shrinking it
            best = min(best, time.perf_counter() - started)
    return Case(RAW, "ceiling", len(batch), best, {"best_of": repeats})


def take_each_once(items: Iterable[int]) -> Callable[[], int | None]:
    """A function that several threads may call, each item going to exactly one of them; None
    once all are taken. (Not a shared generator: two threads resuming one generator at once
    raise "generator already executing", which killed a worker mid-measurement.)"""
    lock = threading.Lock()
    source = iter(items)

    def take() -> int | None:
        with lock:
            return next(source, None)

    return take


def ceiling_ways(model_file: Path, batch_size: int, threads: int | None) -> Ways:
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


def compare_ceilings(ways: Ways, baseline_ways: Ways, batch: np.ndarray, passes: int = 3) -> dict[str, Any]:
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


def measure_ceiling(ways: Ways, batch: np.ndarray, when: str, runs: dict[str, float], repeats: int = 3) -> Case:
    """The fastest of ``ways``, each the best of ``repeats`` passes; every figure goes into ``runs``
    as ``"{when}, {label}"``."""
    cases = []
    for label, (classifier, batch_size, workers) in ways.items():
        cases.append(measure_raw_onnxruntime(classifier, batch, batch_size, repeats=repeats, workers=workers))
        runs[f"{when}, {label}"] = round(cases[-1].rate, 1)
    return min(cases, key=lambda case: case.seconds)


class CeilingBeside:
    """The ceiling beside each end-to-end case: the usually fastest way (the last of ``ways``: side
    by side on the loop's chunks, where there are cores) again, right before and right after the
    case. How many cores this VM really gets changes within a run (the same measurement moved by
    up to 28% between a run's start and end), and a case is judged against the ceiling of its own
    minutes, the higher of the two."""

    def __init__(self, ways: Ways, batch: np.ndarray, runs: dict[str, float]) -> None:
        self.label = list(ways)[-1]
        self.way = ways[self.label]
        self.batch = batch
        self.runs = runs
        self.rates = [runs[f"first, {self.label}"]]

    def after_case(self) -> float:
        """The higher of the ceiling measured before the case that just ran and one measured now."""
        before = self.rates[-1]
        classifier, size, workers = self.way
        rate = measure_raw_onnxruntime(classifier, self.batch, size, workers=workers).rate
        self.runs[f"beside {len(self.rates)}, {self.label}"] = round(rate, 1)
        self.rates.append(rate)
        return round(max(before, rate), 1)
