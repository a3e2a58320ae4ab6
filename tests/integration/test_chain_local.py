"""The whole chain through the real `luigi` command on the embedded defaults (local queue,
SQLite, a local MLflow store)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TEST_EPOCHS




def only(paths) -> Path:
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_export_on_mnist_sample_records_everything_in_mlflow(trained_home):
    import mlflow

    from vectorai.inference import OnnxClassifier
    from vectorai.prepare import load_splits
    from vectorai.preprocess import preprocess_images

    model_dir = only((trained_home / "models").glob("mnist-sample-*"))
    summary = json.loads((model_dir / "keras" / "metrics.json").read_text())
    assert summary["metrics"]["test_accuracy"] >= 0.95
    exported = json.loads((model_dir / "onnx" / "model.json").read_text())
    assert exported["parity"]["argmax_mismatches"] == 0 and exported["parity"]["max_abs_diff"] <= 1e-4
    assert exported["class_names"] == [str(d) for d in range(10)]

    # The ONNX model alone (no TensorFlow) reproduces the Keras test accuracy.
    split_dir = only((trained_home / "data" / "processed" / "mnist-sample").iterdir())
    test = load_splits(split_dir).test
    onnx_model = OnnxClassifier(model_dir / "onnx" / "model.onnx")
    predicted = onnx_model.predict_proba(preprocess_images(test.images, onnx_model.spec)).argmax(axis=1)
    assert float(np.mean(predicted == test.labels)) == pytest.approx(summary["metrics"]["test_accuracy"], abs=2e-3)
    split = json.loads((split_dir / "split.json").read_text())
    # Test by content digest: 15 % of 5,000 give or take chance; the stream exactly as asked.
    assert split["sizes"]["stream"] == 200 and sum(split["sizes"].values()) == 5000
    assert 650 <= split["sizes"]["test"] <= 850 and split["sizes"]["val"] == 750

    mlflow.set_tracking_uri(f"sqlite:///{trained_home / 'data' / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["epochs"] == str(TEST_EPOCHS) and run.data.params["dataset"] == "mnist-sample"
    assert run.data.params["batch_size"] == "128" and run.data.params["image_height"] == "28"
    assert run.data.params["recipe"] == "2" and run.data.params["max_rotation_degrees"] == "12.0"
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == list(range(1, TEST_EPOCHS + 1)), name
    # Correctly named: validation metrics come from the val split, test from the test split.
    val_history = [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert val_history == pytest.approx(summary["history"]["val_accuracy"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["metrics"]["test_accuracy"])
    assert run.data.metrics["test_loss"] == pytest.approx(summary["metrics"]["test_loss"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.keras", "learning_curves.png", "confusion_matrix.png", "metrics.json", "onnx"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "onnx")} == {"onnx/model.onnx", "onnx/model.json"}


def test_rerunning_a_complete_chain_does_no_work(project):
    before = {p: p.stat().st_mtime_ns for p in (project.root / "models").rglob("*") if p.is_file()}
    out = project.luigi("ExportOnnx")
    assert "ran successfully" not in out.stderr and "complete ones were encountered" in out.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (project.root / "models").rglob("*") if p.is_file()}


def test_changing_a_result_parameter_changes_the_model_path(project):
    from luigi.cmdline_parser import CmdlineParser

    import tasks

    with CmdlineParser.global_instance(["ExportOnnx", "--paths-models-dir", str(project.root / "models")]) as parser:
        default = parser.get_task_obj().output().path
    with CmdlineParser.global_instance(["ExportOnnx", "--epochs", "3", "--paths-models-dir",
                                        str(project.root / "models")]) as parser:
        changed = parser.get_task_obj().output().path
    with CmdlineParser.global_instance(["ExportOnnx", "--seed", "7", "--paths-models-dir",
                                        str(project.root / "models")]) as parser:
        reseeded = parser.get_task_obj().output().path
    assert len({default, changed, reseeded}) == 3
    assert tasks.ExportOnnx  # the module registers the tasks it names


def read_rows(db_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM prediction ORDER BY message_id").fetchall()


def test_predict_chain_writes_one_row_per_streamed_image(project):
    project.luigi("PredictTask")
    manifest = json.loads(only((project.data / "stream" / "manifests").glob("*.json")).read_text())
    report = json.loads(only((project.data / "reports").glob("predict-local-adhoc-*.json")).read_text())
    rows = read_rows(project.data / "predictions.sqlite")

    assert manifest["count"] == 200 and len(set(manifest["ids"])) == 200
    assert sorted(r["message_id"] for r in rows) == sorted(manifest["ids"])
    assert {r["source"] for r in rows} == {"local"}
    assert {r["predicted_name"] for r in rows} == {str(d) for d in range(10)}
    assert all(r["predicted_name"] == str(r["predicted_class"]) for r in rows)
    assert all(r["true_label"] is not None and r["image"][:8] == b"\x89PNG\r\n\x1a\n" for r in rows)
    assert all(r["produced_at"] <= r["predicted_at"] for r in rows)
    correct = sum(r["true_label"] == r["predicted_class"] for r in rows)
    assert report["predicted"] == 200 and report["dead_letters"] == 0
    assert report["accuracy"] == pytest.approx(correct / 200) and report["accuracy"] >= 0.95
    assert sum(report["per_class"].values()) == 200

    again = project.luigi("PredictTask")
    assert "ran successfully" not in again.stderr
    assert len(read_rows(project.data / "predictions.sqlite")) == 200

    # A new scheduled run (cron passes the time) finds the stream drained: no new rows.
    project.luigi("PredictTask", "--run-at", "2026-11-26T07")
    cron_report = json.loads(only((project.data / "reports").glob("predict-local-2026-11-26T07-*.json")).read_text())
    assert cron_report["consumed"] == 0 and len(read_rows(project.data / "predictions.sqlite")) == 200

    results = project.command("vectorai-results", "--json")
    assert json.loads(results)["predictions"] == 200


def test_stream_and_predict_as_separate_processes(project):
    """The consumer is already waiting when the producer process starts; nothing lost or doubled."""
    predictor = project.spawn("PredictTask", "--require-stream", "false", "--stream-timeout-ms", "20000",
                              "--predict-batch-size", "32")
    time.sleep(3)
    project.luigi("StreamData", "--count", "150")
    project.luigi("StreamData", "--count", "200", "--stream-encoding", "raw")  # overlaps: ids 0-149 again
    output, _ = predictor.communicate(timeout=600)
    assert predictor.returncode == 0, output[-4000:]
    rows = read_rows(project.data / "predictions.sqlite")
    assert sorted(r["message_id"].rsplit("-", 1)[0] for r in rows) == [f"mnist-sample-{i:08d}" for i in range(200)]
    with sqlite3.connect(only((project.data / "stream").glob("*.sqlite"))) as queue:
        assert queue.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 350
        assert queue.execute("SELECT committed FROM cursors").fetchone()[0] == 350


def test_hand_written_message_is_classified(project):
    """A producer that is not ours writes the documented local-queue row and message format."""
    from vectorai.prepare import load_stream_sample

    split_dir = only((project.data / "processed" / "mnist-sample").iterdir())
    sample = load_stream_sample(split_dir / "stream.npz", limit=5)
    queue_dir = project.data / "stream"
    queue_dir.mkdir(parents=True, exist_ok=True)
    project.luigi("PredictTask", "--require-stream", "false", "--stream-timeout-ms", "200")  # creates the queue
    with sqlite3.connect(queue_dir / "vectorai-images.sqlite") as queue:
        for i, (image, label) in enumerate(zip(sample.images, sample.labels)):
            attributes = {"id": f"by-hand-{i}", "content-type": "application/x-ndarray", "dtype": "uint8",
                          "shape": "28,28", "label": str(int(label)), "produced-at": "2026-11-26T06:00:00Z"}
            queue.execute("INSERT INTO messages (key, attributes, payload, published_at) VALUES (?, ?, ?, ?)",
                          (attributes["id"], json.dumps(attributes), np.asarray(image, np.uint8).tobytes(), time.time()))
    project.luigi("PredictTask", "--require-stream", "false", "--stream-timeout-ms", "200", "--run-at", "by-hand")
    rows = read_rows(project.data / "predictions.sqlite")
    assert [r["message_id"] for r in rows] == [f"by-hand-{i}" for i in range(5)]
    assert sum(r["predicted_class"] == r["true_label"] for r in rows) >= 4


def test_prediction_path_never_imports_tensorflow(project, tmp_path):
    """PredictTask runs with a `tensorflow` that explodes on import first on the path."""
    from tests.conftest import REPO

    blocker = tmp_path / "blocker" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('TensorFlow imported on the prediction path')\n")
    (blocker.parent / "keras").mkdir()
    (blocker.parent / "keras" / "__init__.py").write_text("raise ImportError('Keras imported on the prediction path')\n")
    project.luigi("PredictTask", extra_env={"PYTHONPATH": f"{blocker.parent}:{REPO}"})
    assert len(read_rows(project.data / "predictions.sqlite")) == 200
