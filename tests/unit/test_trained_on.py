"""What a registered version trained on, as the registry records it (a local MLflow SQLite store):
read back for PromoteModel, and refused when the record no longer matches its tag."""

from __future__ import annotations

import pytest

from vectorai.errors import RegistryError
from vectorai.registry import TRAINED_ON_ARTIFACT, record_training_set, resolve, trained_on


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A tracking store with one run and a version of ``m`` registered from it, with no tags yet."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.create_registered_model("m")
    version = client.create_model_version("m", f"runs:/{run_id}/model", run_id=run_id).version
    mlflow.set_tracking_uri(uri)
    return uri, client, run_id, str(version)


def test_a_version_reads_back_what_it_trained_on_and_refuses_a_changed_record(store):
    import mlflow

    uri, client, run_id, version = store
    ref = resolve(f"models:/m/{version}", uri)
    assert trained_on(ref, uri) is None  # registered before the record existed

    mlflow.set_experiment("another")  # the caller's own active experiment must not matter
    tags = record_training_set(["b" * 64, "a" * 64, "b" * 64], tracking_uri=uri, run_id=run_id)
    assert tags["trained_on_images"] == "2" and tags["trained_on_artifact"] == TRAINED_ON_ARTIFACT
    for key, value in tags.items():
        client.set_model_version_tag("m", version, key, value)
    assert trained_on(ref, uri) == {"a" * 64, "b" * 64}

    client.log_text(run_id, "c" * 64 + "\n", TRAINED_ON_ARTIFACT)
    with pytest.raises(RegistryError, match="does not match the version's trained_on_digest tag"):
        trained_on(ref, uri)
