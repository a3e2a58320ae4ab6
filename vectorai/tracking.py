"""MLflow: where runs are recorded. The default is a SQLite store inside the project."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

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

    uri, userinfo = _split_credentials(tracking_uri)
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    mlflow.set_tracking_uri(uri)
    return uri


def _split_credentials(tracking_uri: str) -> tuple[str, str | None]:
    """An http(s) URI without its user information, and that user information (None when it
    has none or is not http(s))."""
    if tracking_uri.startswith(("http://", "https://")):
        scheme, _, rest = tracking_uri.partition("://")
        # The last '@' ends the user information, as in vectorai.redact.mask_url.
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            return f"{scheme}://{hostpart}", userinfo
    return tracking_uri, None


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when ``tracking_uri`` is an MLflow server (http/https),
    with no user or password in it (it is shown to everyone who opens the scheduler); None for
    stores that have no page of their own."""
    uri, _ = _split_credentials(tracking_uri)
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(run_id, safe='')}"


def describe_run(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One line naming an MLflow run and how to open it: its page on a server, else the
    ``mlflow ui`` command that serves the store (with any password masked) and the page's
    address under that command's default port."""
    page = run_page_url(tracking_uri, experiment_id, run_id)
    if page is not None:
        return f"MLflow run {run_id}: {page}"
    if tracking_uri.startswith("databricks"):
        return f"MLflow run {run_id} in {mask_url(tracking_uri)}"
    return (f"MLflow run {run_id}: mlflow ui --backend-store-uri {mask_url(tracking_uri)}, then "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")


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
