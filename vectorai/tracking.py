"""MLflow: where runs are recorded. The default is a SQLite store inside the project."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

from vectorai.errors import ConfigError
from vectorai.redact import mask_error, mask_url


def default_tracking_uri(mlflow_dir: Path) -> str:
    """A local store needing no server: ``sqlite:///<mlflow_dir>/mlflow.db``."""
    return f"sqlite:///{(mlflow_dir / 'mlflow.db').resolve()}"


def use_tracking_uri(tracking_uri: str) -> str:
    """Point MLflow at ``tracking_uri``; return the URI as MLflow now has it.

    A user and password in an http(s) URI are handed to MLflow through its own
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` instead, so the URI that MLflow
    prints ("View run ... at: <uri>") and puts in its errors carries no secret. Other stores
    (``postgresql://`` via SQLAlchemy) need the password in the URI; their errors are masked
    by :func:`mlflow_run`.
    """
    import mlflow

    uri = tracking_uri
    if tracking_uri.startswith(("http://", "https://")):
        scheme, _, rest = tracking_uri.partition("://")
        # The last '@' ends the user information, as in vectorai.redact.mask_url.
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, _, password = userinfo.partition(":")
            os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
            uri = f"{scheme}://{hostpart}"
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def mlflow_run(tracking_uri: str, experiment: str, artifact_dir: Path | None, run_name: str) -> Iterator["object"]:
    """Start an MLflow run, creating the experiment when missing.

    For a local store the experiment's artifacts go to ``artifact_dir`` (absolute), because
    MLflow's own default is ``./mlruns`` relative to whatever the working directory happens to be.
    """
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    use_tracking_uri(tracking_uri)
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
        # MLflow's messages may quote the URI (REST errors name the request URL), and may span
        # lines; the error is one line naming the store with its password masked.
        reason = mask_error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
                            tracking_uri)
        raise ConfigError("mlflow.tracking_uri", f"cannot use MLflow store {mask_url(tracking_uri)}: {reason}") from None
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield run
