"""Each bad input or setting ends the task with one line naming it, writes no target, and leaves
the stream and the database as they were."""

from __future__ import annotations

import re
import sqlite3

import pytest


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("vectorai error: ")]


def state(project) -> tuple:
    """What must not change: report files, prediction rows, queue position."""
    reports = sorted(p.name for p in (project.data / "reports").glob("*.json"))
    db = project.data / "predictions.sqlite"
    rows = 0
    if db.exists():
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM prediction").fetchone()[0]
    queue = project.data / "stream" / "vectorai-images.sqlite"
    committed = None
    if queue.exists():
        with sqlite3.connect(queue) as conn:
            found = conn.execute("SELECT committed FROM cursors").fetchall()
            committed = found[0][0] if found else 0
    return reports, rows, committed


@pytest.fixture
def streamed(project):
    """A project whose stream holds 200 unconsumed messages."""
    project.luigi("StreamData")
    return project


def fail(project, *args, extra_env=None) -> str:
    proc = project.luigi(*args, check=False, extra_env=extra_env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    lines = error_lines(output)
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("args,extra_env,expected", [
    (["--stream-transport", "rabbit"], None, r"setting stream.transport: unknown transport 'rabbit'"),
    (["--sources", "local,bogus"], None, r"setting PredictTask.sources: unknown transport 'bogus'"),
    (["--predict-batch-size", "0"], None, r"setting PredictTask.predict_batch_size: 0 is not allowed; it must be at least 1"),
    (["--inference-threads", "-2"], None, r"setting PredictTask.inference_threads: -2 is not allowed"),
    (["--sources", "kafka", "--kafka-bootstrap-servers", "127.0.0.1:1", "--kafka-connect-timeout-ms", "2000"],
     None, r"transport kafka: .*127\.0\.0\.1:1"),
    ([], {"DATABASE_URL": "mysql://app:hunter2@db/predictions"},
     r"database mysql://app:\*\*\*@db/predictions: unsupported URL"),
    ([], {"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/predictions"},
     r"database postgresql://app:\*\*\*@127\.0\.0\.1:1/predictions: .*"),
])
def test_bad_settings_fail_in_one_line_and_touch_nothing(streamed, args, extra_env, expected):
    before = state(streamed)
    line = fail(streamed, "PredictTask", "--require-stream", "false", "--database-connect-timeout-s", "2",
                *args, extra_env=extra_env)
    assert re.search(expected, line), line
    assert "hunter2" not in line
    assert state(streamed) == before


def test_missing_and_corrupt_model_files(streamed, tmp_path):
    before = state(streamed)
    line = fail(streamed, "PredictTask", "--require-stream", "false", "--model-path", str(tmp_path / "nope.onnx"))
    assert re.search(r"model .*nope\.onnx: file not found", line)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 this is not protobuf")
    line = fail(streamed, "PredictTask", "--require-stream", "false", "--model-path", str(tmp_path / "bad.onnx"))
    assert re.search(r"model .*bad\.onnx: cannot load ONNX model", line)
    [model] = (streamed.root / "models").glob("*/onnx/model.onnx")
    # Truncated on disk after export. (The chain itself scores with the registered version's
    # own copy, checked by its SHA-256, so only a plain file can be damaged this way.)
    model.write_bytes(model.read_bytes()[:1000])
    line = fail(streamed, "PredictTask", "--require-stream", "false", "--model-path", str(model))
    assert re.search(r"model .*model\.onnx: cannot load ONNX model", line)
    assert state(streamed) == before


def test_missing_and_corrupt_datasets(project, tmp_path):
    line = fail(project, "SplitData", "--dataset", "no-such-dataset")
    assert "dataset" in line and "no-such-dataset" in line and "not found" in line
    bad = project.data / "external" / "broken"
    (bad / "cats").mkdir(parents=True)
    (bad / "dogs").mkdir(parents=True)
    (bad / "cats" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (bad / "dogs" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = fail(project, "SplitData", "--dataset", "broken")
    assert "1.png" in line
    assert not list((project.data / "processed").glob("broken*/*"))
    line = fail(project, "SplitData", "--val-fraction", "0.6", "--test-fraction", "0.5")
    assert "val_fraction + test_fraction" in line


def test_stream_size_larger_than_test_split(project):
    line = fail(project, "SplitData", "--stream-size", "5000")
    assert "SplitData.stream_size" in line
