"""The benchmark's photos case and its scaling table run end to end on a tiny input (local
queue and SQLite, no services). They measure; nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.helpers import tiny_onnx_model

pytestmark = pytest.mark.system  # the benchmark's end-to-end runs: make test-all

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One MobileNetV2-sized model for both runs (the script builds it on first use)."""
    return tmp_path_factory.mktemp("bench-cache")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--quiet", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_the_photos_case_reports_throughput_against_its_ceiling_cpu_and_memory(tmp_path, cache):
    digits = tmp_path / "digits" / "onnx"
    digits.mkdir(parents=True)
    tiny_onnx_model(digits / "model.onnx", height=28, width=28, channels=1, classes=10)
    out = tmp_path / "bench.json"

    _run("--cases", "photos", "--cache", str(cache), "--model", str(digits), "--json", str(out), cwd=tmp_path)

    summary = json.loads(out.read_text())
    assert "results" not in summary  # photos alone: the digits cases were not run
    photos = summary["photos"]
    assert (cache / "mobilenetv2-224.onnx").is_file()
    assert photos["predicted"] == photos["images"] == 64 and photos["dead_letters"] == 0
    assert photos["images_per_second"] > 0 and photos["ceiling_beside_images_per_second"] > 0
    assert photos["ratio_to_ceiling_beside"] == pytest.approx(
        photos["images_per_second"] / photos["ceiling_beside_images_per_second"], rel=0.01)  # of rounded figures
    assert photos["ceiling_beside_images_per_second"] == max(photos["ceiling_runs"].values())
    # --tiny: two end-to-end runs, a ceiling before, between and after them; the best run is the
    # figure, the median is reported, and memory is the highest of both.
    assert {name.split(",")[0] for name in photos["ceiling_runs"]} == {"before", "between 1", "after"}
    runs = photos["runs"]
    assert len(runs) == 2 and photos["images_per_second"] == max(run["images_per_second"] for run in runs)
    assert photos["median_ratio_to_ceiling_beside"] <= photos["ratio_to_ceiling_beside"]
    assert photos["peak_rss_mib"] == max(run["peak_rss_mib"] for run in runs)
    assert photos["cpu_seconds_per_1000_images"] > 0 and photos["peak_rss_mib"] > 0
    assert photos["decode_cpu_ms_per_photo"]["jpeg_draft"] > 0 and photos["decode_cpu_ms_per_photo"]["full_decode"] > 0
    check = photos["draft_agreement"]
    assert check["images"] == 50 and 0 <= check["agreement"] <= 1
    assert photos["targets"]["draft top-1 agreement >= 99.5 %"] == (check["agreement"] >= 0.995)
    assert photos["targets"]["peak RSS <= 600 MB"] == (photos["peak_rss_mib"] * 2**20 <= 600e6)


def test_the_scaling_table_runs_the_photos_case_once_per_core_count(tmp_path, cache):
    out = tmp_path / "scaling.json"

    proc = _run("--cores", "1", "--cache", str(cache), "--json", str(out), cwd=tmp_path)

    rows = json.loads(out.read_text())["photos_scaling"]["rows"]
    assert [row["cores"] for row in rows] == [1]
    # Pinned to one core, the library sees one: onnxruntime and the decoding pool one thread each.
    assert rows[0]["decode_threads"] == 1 and rows[0]["images_per_second"] > 0
    lines = proc.stdout.splitlines()
    table = lines[:lines.index("{")]  # then the JSON
    assert table[0].startswith("photos scaling") and table[-1].split("|")[0].strip() == "1"
