"""The model registry on the real chain: each export a registered version, PromoteModel moving
``champion`` only to a version at least as good, PredictTask scoring with whatever ``champion``
points to when it starts (the local SQLite store, and a real ``mlflow server``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Project, new_project
from tests.fixtures_mlflow import mlflow_api

pytestmark = pytest.mark.slow

NAME = "vectorai-mnist-sample"
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
#: The task parameters of version 2 (``two_versions``): another seed, one epoch.
SECOND = ("--seed", "7", "--epochs", "1")


def client(project: Project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project.data / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(project: Project) -> dict[str, str]:
    return {alias: str(version) for alias, version in client(project).get_registered_model(NAME).aliases.items()}


def exported(project: Project) -> dict[str, dict]:
    """Registered version -> the export's model.json, for every exported model."""
    found = {}
    for path in (project.root / "models").glob("*/onnx/model.json"):
        data = json.loads(path.read_text())
        found[data["registered_model"]["version"]] = {**data, "dir": path.parent.parent}
    return found


def decision(project: Project, version: str) -> dict:
    paths = list((exported(project)[version]["dir"] / "promotion").glob("*.json"))
    assert len(paths) == 1, paths
    return json.loads(paths[0].read_text())


def rows(project: Project, prefix: str = "") -> list[sqlite3.Row]:
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM prediction WHERE message_id LIKE ? ORDER BY message_id",
                            (prefix + "%",)).fetchall()


def sample_file(project: Project, tmp_path: Path, stem: str, count: int = 50) -> Path:
    """Stream images under new ids: a copy of the split's stream sample named ``stem``."""
    split_dir = next((project.data / "processed" / "mnist-sample").iterdir())
    with np.load(split_dir / "stream.npz") as sample:
        path = tmp_path / f"{stem}.npz"
        np.savez(path, x=sample["images"][:count], y=sample["labels"][:count])
    return path


@pytest.fixture(scope="module")
def two_models(two_versions) -> Path:
    """The shared model (version 1, TEST_EPOCHS epochs) and a 1-epoch one (version 2, another
    seed), both exported and registered, neither promoted yet."""
    versions = exported(Project(two_versions))
    assert sorted(versions) == ["1", "2"]
    assert json.loads((versions["1"]["dir"] / "keras" / "metrics.json").read_text())["config"]["epochs"] > 1
    return two_versions


def test_every_export_is_a_registered_onnx_model_with_its_figures(two_models):
    project = new_project(two_models.parent / "inspect", base=two_models)
    registry = client(project)
    assert {str(v.version) for v in registry.search_model_versions(f"name='{NAME}'")} == {"1", "2"}
    assert aliases(project) == {}
    for version, data in exported(project).items():
        found = registry.get_model_version(NAME, version)
        assert found.run_id == data["mlflow_run_id"]
        tags = found.tags
        assert float(tags["test_accuracy"]) == pytest.approx(data["test_accuracy"])
        assert tags["parity_passed"] == "true" and int(tags["parity_argmax_mismatches"]) == 0
        assert float(tags["parity_max_abs_diff"]) == pytest.approx(data["parity"]["max_abs_diff"])
        assert tags["dataset"] == "mnist-sample" and tags["model_name"] == data["dir"].name
        assert data["dir"].name.endswith(tags["params_hash"])
        # The onnx flavour, with a signature and an input example.
        import mlflow
        from mlflow.models import get_model_info

        mlflow.set_tracking_uri(f"sqlite:///{project.data / 'mlflow' / 'mlflow.db'}")
        info = get_model_info(f"models:/{NAME}/{version}")
        assert "onnx" in info.flavors and info.signature is not None
        assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 28, 28, 1]
        assert info.saved_input_example_info is not None


@pytest.mark.parametrize("better_first", [True, False], ids=["better-first", "worse-first"])
def test_the_better_model_ends_as_champion_in_either_order(two_models, tmp_path, better_first):
    project = new_project(tmp_path / "home", base=two_models)
    if better_first:
        project.luigi("PromoteModel")
        project.luigi("PromoteModel", *SECOND)
        assert aliases(project) == {"champion": "1"}
        refused = decision(project, "2")
        assert not refused["promote"] and refused["outcome"] == "refused" and "below" in refused["reason"]
        assert refused["champion"]["version"] == "1" and refused["aliases"] == {"champion": "1", "previous": None}
        assert client(project).get_model_version(NAME, "2").tags["promotion"].startswith("refused: ")
    else:
        project.luigi("PromoteModel", *SECOND)
        assert aliases(project) == {"champion": "2"}
        assert decision(project, "2")["reason"] == "there was no champion yet"
        project.luigi("PromoteModel")
        assert aliases(project) == {"champion": "1", "previous": "2"}
        promoted = decision(project, "1")
        assert promoted["promote"] and promoted["aliases"] == {"champion": "1", "previous": "2"}

    # Both accuracies on the same images (the split's test images), the versions, the decision.
    record = decision(project, "1" if not better_first else "2")
    split = json.loads(next((project.data / "processed" / "mnist-sample").glob("*/split.json")).read_text())
    assert record["images"] == split["sizes"]["test"] > 600 and record["eval_set"].startswith("test split ")
    assert record["candidate"]["accuracy"] != record["champion"]["accuracy"]
    best = max(record["candidate"]["accuracy"], record["champion"]["accuracy"])
    assert best >= 0.95 and decision(project, "1")["candidate"]["accuracy"] == best
    # ... also logged to the candidate's training run.
    run_id = exported(project)["1"]["mlflow_run_id"]
    [decided] = (exported(project)["1"]["dir"] / "promotion").glob("*.json")
    # (The copied projects share the base's artifact folder, so other tests' decisions may be there too.)
    logged = {a.path for a in client(project).list_artifacts(run_id, "promotion")}
    assert f"promotion/{decided.name}" in logged and decided.name.startswith(f"{NAME}-")


def test_a_fixed_eval_file_and_min_improvement(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    eval_file = sample_file(project, tmp_path, "holdout", count=200)
    project.luigi("PromoteModel", *SECOND, "--eval-file", str(eval_file))
    # Better, but not by a whole 100 points: refused, and a refusal is a success.
    project.luigi("PromoteModel", "--eval-file", str(eval_file), "--min-improvement", "1.0")
    assert aliases(project) == {"champion": "2"}
    record = decision(project, "1")
    assert record["outcome"] == "refused" and record["images"] == 200 and record["eval_set"] == str(eval_file)
    assert record["min_improvement"] == 1.0


def test_an_export_from_before_the_registry_is_registered_when_promoted(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    model_json = exported(project)["1"]["dir"] / "onnx" / "model.json"
    old = json.loads(model_json.read_text())
    del old["registered_model"]
    model_json.write_text(json.dumps(old))
    client(project).delete_model_version(NAME, "1")  # nothing registered from its run
    project.luigi("PromoteModel")
    assert aliases(project) == {"champion": "3"}
    assert client(project).get_model_version(NAME, "3").tags["model_name"] == model_json.parent.parent.name


def test_predict_scores_with_whatever_champion_points_to(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    project.luigi("PredictTask")  # the chain: promotes version 1 (no champion yet), scores with it
    first = rows(project)
    assert len(first) == 200 and {r["model_version"] for r in first} == {f"{NAME}/1"}
    report = json.loads(next((project.data / "reports").glob("predict-local-adhoc-*.json")).read_text())
    assert report["model_version"] == f"{NAME}/1"

    # Rolling back / forward is moving the alias; the same command then uses the other version.
    client(project).set_registered_model_alias(NAME, "champion", "2")
    project.luigi("PredictTask", "--sample-file", str(sample_file(project, tmp_path, "second")), "--run-at", "second")
    second = rows(project, "second-")
    assert len(second) == 50 and {r["model_version"] for r in second} == {f"{NAME}/2"}

    # Any version by number, without the chain.
    project.luigi("StreamData", "--sample-file", str(sample_file(project, tmp_path, "third")))
    project.luigi("PredictTask", "--model-uri", f"models:/{NAME}/1", "--require-stream", "false", "--run-at", "third")
    assert {r["model_version"] for r in rows(project, "third-")} == {f"{NAME}/1"}

    # Each version downloaded once into the cache, with the SHA-256 the registry has for it.
    cache = project.data / "mlflow" / "models-cache" / NAME
    assert sorted(p.name for p in cache.iterdir()) == ["1", "2"]
    for version in ("1", "2"):
        assert sorted(p.name for p in (cache / version).iterdir()) == ["model.onnx"]
        tag = client(project).get_model_version(NAME, version).tags["sha256"]
        assert hashlib.sha256((cache / version / "model.onnx").read_bytes()).hexdigest() == tag


def test_a_shadow_run_stores_both_models_predictions_and_reports_their_agreement(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    project.luigi("StreamData")
    client(project).set_registered_model_alias(NAME, "challenger", "2")  # PredictTask promotes version 1
    project.luigi("PredictTask", "--shadow-model-uri", f"models:/{NAME}@challenger", "--run-at", "shadow")

    primary = {r["message_id"]: r for r in rows(project)}
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        shadow = {r["message_id"]: r for r in conn.execute("SELECT * FROM shadow_prediction")}
    assert len(primary) == 200 and set(shadow) == set(primary)
    assert {r["model_version"] for r in primary.values()} == {f"{NAME}/1"}
    assert {r["model_version"] for r in shadow.values()} == {f"{NAME}/2"}
    agreed = sum(primary[key]["predicted_name"] == shadow[key]["predicted_name"] for key in primary)
    correct = sum(r["predicted_class"] == r["true_label"] for r in shadow.values())
    report = json.loads(next((project.data / "reports").glob("predict-local-shadow-*.json")).read_text())
    assert report["shadow"] == {"model_version": f"{NAME}/2", "scored": 200, "agreement": agreed / 200,
                                "accuracy": correct / 200, "errors": 0}
    assert report["accuracy"] > report["shadow"]["accuracy"]  # TEST_EPOCHS epochs against 1
    # The metrics file says the same, for alerting on a challenger that disagrees.
    metrics = (project.data / "metrics" / "vectorai_predict_local.prom").read_text()
    assert f'vectorai_predict_last_run_shadow_agreement{{predict_job="local",source="local",' \
           f'model_version="{NAME}/1"}} {agreed / 200!r}' in metrics


def test_a_shadow_model_that_cannot_be_loaded_is_reported_and_the_run_goes_on_with_the_primary(two_models, tmp_path):
    """Shadow scoring is best effort from the start: ``@challenger`` naming no version is
    reported (run report, metrics file) and every message is scored by the primary model alone;
    the run succeeds."""
    project = new_project(tmp_path / "home", base=two_models)
    project.luigi("StreamData", "--count", "20")
    project.luigi("PredictTask", "--require-stream", "false", "--shadow-model-uri", f"models:/{NAME}@challenger",
                  "--run-at", "nochallenger")

    assert len(rows(project)) == 20
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM shadow_prediction").fetchone()[0] == 0
    report = json.loads(next((project.data / "reports").glob("predict-local-nochallenger-*.json")).read_text())
    assert report["predicted"] == 20
    shadow = report["shadow"]
    assert shadow["model_version"] == "" and shadow["scored"] == 0
    assert shadow["unavailable"].startswith(f"model models:/{NAME}@challenger: cannot resolve alias challenger")
    metrics = (project.data / "metrics" / "vectorai_predict_local.prom").read_text()
    assert 'vectorai_predict_last_run_shadow_unavailable{predict_job="local",source="local",' in metrics
    assert [line for line in metrics.splitlines() if line.startswith("vectorai_predict_last_run_shadow_unavailable")
            ][0].endswith(" 1")


def one_line_failure(project: Project, *args: str) -> str:
    proc = project.luigi("PredictTask", "--require-stream", "false", "--run-at", "bad", *args, check=False)
    assert proc.returncode == 30, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vectorai error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_uri_that_does_not_resolve_fails_before_consuming(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    project.luigi("StreamData", "--count", "20")  # nothing promoted: there is no @champion yet

    line = one_line_failure(project, "--model-uri", "models:/nope@champion")
    assert "models:/nope@champion" in line and "nope" in line and "not found" in line
    assert "models:/vectorai-mnist-sample/9" in one_line_failure(project, "--model-uri", f"models:/{NAME}/9")
    assert "alias previous" in one_line_failure(project, "--model-uri", f"models:/{NAME}@previous")
    assert "not a model URI" in one_line_failure(project, "--model-uri", "runs:/abc/model")

    # Nothing consumed: no cursor moved, no row, and the next good run gets all 20.
    with sqlite3.connect(project.data / "stream" / "vectorai-images.sqlite") as queue:
        assert queue.execute("SELECT COUNT(*) FROM cursors WHERE committed > 0").fetchone()[0] == 0
    assert not (project.data / "predictions.sqlite").exists() or not rows(project)
    project.luigi("PredictTask", "--require-stream", "false", "--run-at", "good")
    assert len(rows(project)) == 20


def test_a_pinned_model_never_trains_exports_or_moves_the_champion(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    models = sorted(p.name for p in (project.root / "models").iterdir())
    # --require-stream is left at true: StreamData sends the split's sample and needs nothing else.
    project.luigi("PredictTask", "--model-uri", f"models:/{NAME}/2")
    assert len(rows(project)) == 200 and {r["model_version"] for r in rows(project)} == {f"{NAME}/2"}
    onnx = exported(project)["1"]["dir"] / "onnx" / "model.onnx"
    # A model that was never trained (3 epochs) is not trained for a run that brings its own file.
    project.luigi("PredictTask", "--model-path", str(onnx), "--epochs", "3", "--run-at", "path",
                  "--sample-file", str(sample_file(project, tmp_path, "path", count=20)))
    assert {r["model_version"] for r in rows(project, "path-")} == {exported(project)["1"]["dir"].name}
    assert aliases(project) == {}
    assert sorted(p.name for p in (project.root / "models").iterdir()) == models
    assert not list((project.root / "models").glob("*/promotion"))


def test_a_retried_export_registers_no_second_version(two_models, tmp_path):
    project = new_project(tmp_path / "home", base=two_models)
    export_dir = exported(project)["1"]["dir"]
    # As after a try that registered its version and then failed: no target, a version in the registry.
    shutil.rmtree(export_dir / "onnx")
    project.luigi("ExportOnnx")
    assert sorted(str(v.version) for v in client(project).search_model_versions(f"name='{NAME}'")) == ["1", "2"]
    model_json = json.loads((export_dir / "onnx" / "model.json").read_text())
    assert model_json["registered_model"] == {"name": NAME, "version": "1"}


def test_promotion_is_tied_to_the_store_it_was_decided_in(two_models, tmp_path, mlflow_server):
    import mlflow

    from vectorai.preprocess import PreprocessSpec, preprocess_images
    from vectorai.registry import register_onnx_model

    project = new_project(tmp_path / "home", base=two_models)
    project.luigi("PromoteModel")
    assert aliases(project) == {"champion": "1"}
    run_id = exported(project)["1"]["mlflow_run_id"]

    # Another store (the session's server; no other test registers NAME there): the decision made
    # in the first is not taken as done there ...
    host = mlflow_server.removeprefix("http://")
    project.set("mlflow", tracking_uri=f"http://alice:s3cret-pw@{host}")

    def refused() -> str:
        proc = project.luigi("PromoteModel", check=False, extra_env=NO_TELEMETRY)
        assert proc.returncode == 30 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        [line] = [line for line in proc.stderr.splitlines() if line.startswith("vectorai error: ")]
        assert "s3cret" not in proc.stdout + proc.stderr
        return line

    # ... and the export is not that store's version 1: there is none yet ...
    line = refused()
    assert f"this export (run {run_id}) is not version 1 of {NAME} in http://alice:***@{host}: " in line
    # ... nor when that store's version 1 is another run's model.
    mlflow.set_tracking_uri(mlflow_server)
    other = mlflow.MlflowClient(mlflow_server).create_run(mlflow.set_experiment("other").experiment_id).info.run_id
    register_onnx_model(exported(project)["2"]["dir"] / "onnx" / "model.onnx", tracking_uri=mlflow_server,
                        run_id=other, name=NAME, tags={},
                        input_example=preprocess_images(np.zeros((1, 28, 28), np.uint8), PreprocessSpec(28, 28, 1)))
    line = refused()
    assert f"is not version 1 of {NAME}" in line and f"that version comes from run {other}" in line
    registered = mlflow_api(mlflow_server, "registered-models/get", name=NAME)["registered_model"]
    assert not registered.get("aliases")
