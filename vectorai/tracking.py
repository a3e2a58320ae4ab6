"""MLflow: where runs are recorded. The default is a SQLite store inside the project."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from vectorai.errors import ConfigError


def default_tracking_uri(mlflow_dir: Path) -> str:
    """A local store needing no server: ``sqlite:///<mlflow_dir>/mlflow.db``."""
    return f"sqlite:///{(mlflow_dir / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def mlflow_run(tracking_uri: str, experiment: str, artifact_dir: Path | None, run_name: str) -> Iterator["object"]:
    """Start an MLflow run, creating the experiment when missing.

    For a local store the experiment's artifacts go to ``artifact_dir`` (absolute), because
    MLflow's own default is ``./mlruns`` relative to whatever the working directory happens to be.
    """
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is None:
            location = None
            if artifact_dir is not None and not tracking_uri.startswith(("http://", "https://", "databricks")):
                artifact_dir.mkdir(parents=True, exist_ok=True)
                location = artifact_dir.resolve().as_uri()
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = existing.experiment_id
    except Exception as err:  # MLflow raises many types for an unreachable or malformed store
        raise ConfigError("mlflow.tracking_uri", f"cannot use MLflow store {tracking_uri}: {err}") from err
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run
