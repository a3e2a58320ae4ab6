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


#: MLflow's own variables for an http(s) store's user and password.
_CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def use_tracking_uri(tracking_uri: str) -> str:
    """Point MLflow at ``tracking_uri`` without its user information; return the URI as MLflow
    now has it.

    MLflow prints that URI ("View run ... at: <uri>") and puts it in its errors, so it carries
    no secret; the user and password of an http(s) URI are lent to MLflow only inside
    :func:`mlflow_credentials`. Other stores (``postgresql://`` via SQLAlchemy) need the password
    in the URI; their errors are masked by :func:`mlflow_run`.
    """
    import mlflow

    uri, _ = _split_credentials(tracking_uri)
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def mlflow_credentials(tracking_uri: str) -> Iterator[str]:
    """MLflow pointed at ``tracking_uri`` (see :func:`use_tracking_uri`), with the URI's user and
    password in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for the block only.

    MLflow reads those variables at each request, so its calls inside the block authenticate;
    afterwards the variables are as they were (a user's own settings stay), so a child process
    started later, or a request to another store, never gets this store's password.
    """
    uri = use_tracking_uri(tracking_uri)
    _, userinfo = _split_credentials(tracking_uri)
    if userinfo is None:
        yield uri
        return
    user, _, password = userinfo.partition(":")
    saved = {name: os.environ.get(name) for name in _CREDENTIAL_VARIABLES}
    os.environ.update(zip(_CREDENTIAL_VARIABLES, (unquote(user), unquote(password))))
    try:
        yield uri
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def store_identity(tracking_uri: str) -> str:
    """The store a tracking URI names, without user, password or secret query values: the same
    for every credential, and safe to hash into a file name or show."""
    uri, _ = _split_credentials(tracking_uri)
    masked = mask_url(uri)
    # A user name (or masked password) of another scheme is not part of the store's identity.
    scheme, sep, rest = masked.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else masked


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
    # The whole run in the block: MLflow calls the store at every logged metric.
    with mlflow_credentials(tracking_uri):
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
