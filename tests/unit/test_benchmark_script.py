"""The throughput benchmark runs end to end on a tiny input. It measures; it is never timed here."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmarks.ceiling import measure_raw_onnxruntime, take_each_once
from tests.unit.helpers import tiny_onnx_model
from vectorai.inference import available_cores

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.system  # the benchmark end to end: make test-all
def test_benchmark_script_runs_on_tiny_input(tmp_path):
    model_dir = tmp_path / "model" / "onnx"
    model_dir.mkdir(parents=True)
    tiny_onnx_model(model_dir / "model.onnx", height=28, width=28, channels=1, classes=10)
    out = tmp_path / "bench.json"

    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--tiny", "--transports", "local",
         "--databases", "sqlite", "--model", str(model_dir), "--baseline-model", str(model_dir), "--json", str(out),
         "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # e.g. a ceiling worker thread died
    summary = json.loads(out.read_text())
    assert {"machine", "images", "batch_size", "encodings", "raw_onnxruntime_images_per_second", "results",
            "memory", "targets", "skipped"} <= set(summary)
    cases = {r["case"]: r for r in summary["results"]}
    expected = {"raw onnxruntime"} | {f"{kind} ({enc})" for enc in summary["encodings"]
                                      for kind in ("publish local", "predict local+sqlite")}
    assert expected <= set(cases)
    for result in summary["results"]:
        assert result["images_per_second"] > 0 and result["ratio_to_raw_onnxruntime"] > 0
    for enc in summary["encodings"]:
        predicted = cases[f"predict local+sqlite ({enc})"]
        assert predicted["images"] == summary["images"] and predicted["predicted"] == summary["images"]
        assert predicted["dead_letters"] == 0
        # Each end-to-end case is also measured against the ceiling of its own minutes, which the
        # targets are judged on.
        beside = predicted["ceiling_beside_images_per_second"]
        assert beside > 0 and predicted["ratio_to_ceiling_beside"] == round(predicted["images_per_second"] / beside, 4)
        assert summary["targets"][f"local+sqlite ({enc}) >= 50% of raw"] == (predicted["ratio_to_ceiling_beside"] >= 0.5)
    assert cases["raw onnxruntime"]["ratio_to_raw_onnxruntime"] == 1.0
    # The ceiling is the fastest way measured, at the start or the end, side by side included.
    ways = cases["raw onnxruntime"]["images_per_second_per_run"]
    end_to_end = [r for r in summary["results"] if "ceiling_beside_images_per_second" in r]
    assert {name.split(",")[0] for name in ways} == {"first", "last"} | {
        f"beside {i}" for i in range(1, 1 + len(end_to_end))}
    # Shadow scoring's cost is a case of its own; the model shadowing itself agrees everywhere.
    for enc in summary["encodings"]:
        shadowed = cases[f"predict local+sqlite ({enc}) + shadow"]
        assert shadowed["predicted"] == summary["images"] and shadowed["shadow_agreement"] == 1.0
    assert abs(cases["raw onnxruntime"]["images_per_second"] - max(ways.values())) <= 0.1
    if available_cores() > 1:
        assert any("side by side, 32 per call" in name for name in ways)
    # --baseline-model: the same ceiling for another model, in alternating passes, and the ratio.
    compared = summary["baseline_model"]
    assert compared["images_per_second"] > 0 and compared["baseline_images_per_second"] > 0
    assert compared["ratio"] == round(compared["images_per_second"] / compared["baseline_images_per_second"], 4)
    assert set(compared["per_way"]) == {name.split(", ", 1)[1] for name in ways if name.startswith("first, ")}
    assert "vs --baseline-model" in proc.stdout
    assert "keras predict" in summary["skipped"]  # the tiny model has no Keras original
    runs = summary["memory"]["runs"]
    assert [r["multiple"] for r in runs] == [1, 10]
    assert all(r["consumed"] == r["messages"] and r["peak_rss_mib"] > 0 for r in runs)
    noise = summary["memory"]["bytes"]  # the byte-budget case, 4 images of 8 MiB when tiny
    assert noise["messages"] == noise["consumed"] == noise["predicted"] == 4 and noise["peak_rss_mib"] > 0
    assert 8 * 2**20 - 40_000 < noise["bytes_each"] <= 8 * 2**20 and "noise PNGs of" in proc.stdout
    # The table is printed before the JSON.
    assert proc.stdout.startswith("case") and "raw onnxruntime" in proc.stdout


def test_the_ceilings_workers_share_the_batches_each_exactly_once():
    take = take_each_once(range(20000))
    taken: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def worker(mine: list[int]) -> None:
        try:
            while (item := take()) is not None:
                mine.append(item)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(item for mine in taken for item in mine) == list(range(20000))


def test_a_ceiling_worker_that_fails_fails_the_measurement():
    class Model:
        def __init__(self, worker_fails: bool) -> None:
            self.worker_fails = worker_fails
            self.calls = 0
            self.lock = threading.Lock()

        def predict_proba(self, batch):
            with self.lock:
                self.calls += 1
            if self.worker_fails and threading.current_thread() is not threading.main_thread():
                raise RuntimeError("worker broke")
            return np.zeros((len(batch), 3), np.float32)

    images = np.zeros((64, 8, 8, 1), np.float32)
    with pytest.raises(RuntimeError, match="worker broke"):
        measure_raw_onnxruntime(Model(worker_fails=True), images, 4, repeats=1, workers=3)
    # Without failures, each of the 16 calls per pass is made once (after one warm-up call).
    model = Model(worker_fails=False)
    case = measure_raw_onnxruntime(model, images, 4, repeats=2, workers=3)
    assert model.calls == 1 + 2 * 16 and case.images == 64
