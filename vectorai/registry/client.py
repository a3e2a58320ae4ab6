"""Talking to the MLflow registry: one client per call site, every MLflow error turned into one
RegistryError line, and the registered versions themselves (resolving, registering, tags).

The registry lives in the MLflow tracking store (the default SQLite store or a server); MLflow
is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from vectorai.errors import RegistryError
from vectorai.redact import mask_error, mask_url
from vectorai.registry.names import SHA256_TAG, ModelVersionRef, check_model_name, parse_model_uri

#: A run id as it may appear in a registry search filter (MLflow's are 32 hex digits).
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

T = TypeVar("T")


def mlflow_client(tracking_uri: str, subject: str):
    """An MlflowClient on ``tracking_uri`` (the registry is in the tracking store). A local
    SQLite store that does not exist is an error here, not a new empty database."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RegistryError(subject, "MLflow is not installed; install vectorai[train] (or mlflow-skinny) to "
                            "use registered models, or give --model-path") from None

    from vectorai.tracking import use_tracking_uri

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise RegistryError(subject, f"no MLflow store at {mask_url(tracking_uri)}; train and export a model "
                                "first (luigi --module tasks PromoteModel)")
    uri = use_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def call_mlflow(subject: str, tracking_uri: str, what: str, action: Callable[[], T]) -> T:
    """``action()``, with the store's credentials lent to MLflow for the call only, and whatever
    MLflow raises turned into one RegistryError line naming the store (password masked)."""
    from vectorai.tracking import mlflow_credentials

    try:
        with mlflow_credentials(tracking_uri):
            return action()
    except RegistryError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow raises MlflowException, requests and SQLAlchemy errors
        text = str(getattr(err, "message", "") or err).strip()
        line = text.splitlines()[0] if text else type(err).__name__
        raise RegistryError(subject, f"{what}: {mask_error(line, tracking_uri)} (MLflow store "
                            f"{mask_url(tracking_uri)})") from None


def _ref(version) -> ModelVersionRef:
    return ModelVersionRef(name=version.name, version=str(version.version), run_id=version.run_id or "",
                           source=version.source or "", sha256=(version.tags or {}).get(SHA256_TAG, ""))


def resolve(uri: str, tracking_uri: str) -> ModelVersionRef:
    """The registered version a ``models:/`` URI names, asked of the registry now (an alias
    follows its latest move)."""
    name, alias, version = parse_model_uri(uri)
    client = mlflow_client(tracking_uri, uri)
    if alias is not None:
        found = call_mlflow(uri, tracking_uri, f"cannot resolve alias {alias} of {name}",
                            lambda: client.get_model_version_by_alias(name, alias))
    else:
        found = call_mlflow(uri, tracking_uri, f"cannot find version {version} of {name}",
                            lambda: client.get_model_version(name, version))
    return _ref(found)


def alias_version(name: str, alias: str, tracking_uri: str) -> str | None:
    """The version ``alias`` points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    from vectorai.tracking import mlflow_credentials

    client = mlflow_client(tracking_uri, f"models:/{name}@{alias}")
    try:
        with mlflow_credentials(tracking_uri):
            return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"models:/{name}@{alias}", mask_error(str(err).splitlines()[0], tracking_uri)) from None


def register_onnx_model(onnx_path: Path, *, tracking_uri: str, run_id: str, name: str,
                        input_example: np.ndarray, tags: dict[str, object]) -> ModelVersionRef:
    """Log ``onnx_path`` as an MLflow model (onnx flavour, signature and input example) in the
    run ``run_id`` and register it as a new version of ``name``, created with ``tags`` and the
    SHA-256 of its model.onnx (:data:`SHA256_TAG`).

    A version of ``name`` already registered from ``run_id`` is returned instead: a retried
    export (the first try failed after registering) must not leave an orphan version. The ONNX
    file is saved whole (no external data) and keeps its metadata, so the version's
    ``model.onnx`` alone is a complete vectorai model (class names, preprocessing)."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    from vectorai.inference import OnnxClassifier

    check_model_name(name)
    subject = f"models:/{name}"
    existing = run_version(name, run_id, tracking_uri)
    if existing is not None:
        return existing
    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, OnnxClassifier(onnx_path, threads=1).predict_proba(example))
    model = onnx.load(str(onnx_path))
    # MLflow's onnx flavour writes the proto's serialisation as model.onnx (onnx.save_model, no
    # external data): these are the bytes every download must have.
    sha256 = hashlib.sha256(model.SerializeToString()).hexdigest()
    mlflow_client(tracking_uri, subject)  # points MLflow at the store; a clear error for a missing one

    def log():
        with mlflow.start_run(run_id=run_id):
            return mlflow.onnx.log_model(
                model, name="onnx-model", signature=signature, input_example=example,
                save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
                # Given, not inferred: inferring them runs a child process (with the store's
                # credentials in its environment) that loads the model again.
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )

    info = call_mlflow(subject, tracking_uri, "cannot log the ONNX model", log)
    # Tags given at creation: a version never exists without its digest.
    created = call_mlflow(subject, tracking_uri, "cannot register the ONNX model",
                          lambda: mlflow.register_model(info.model_uri, name,
                                                        tags={**{k: str(v) for k, v in tags.items()},
                                                              SHA256_TAG: sha256}))
    return _ref(created)


def run_version(name: str, run_id: str, tracking_uri: str) -> ModelVersionRef | None:
    """The first version of ``name`` registered from run ``run_id``, or None."""
    subject = f"models:/{name}"
    check_model_name(name)
    if not _RUN_ID.fullmatch(run_id):
        raise RegistryError(subject, f"{run_id[:70]!r} is not an MLflow run id")
    client = mlflow_client(tracking_uri, subject)
    # Both values are checked above to hold no quote: the filter cannot be rewritten by them.
    found = call_mlflow(subject, tracking_uri, f"cannot look up the versions of run {run_id}",
                        lambda: list(client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")))
    versions = sorted(found, key=lambda v: int(v.version))
    return _ref(versions[0]) if versions else None


def check_export(name: str, version: str, run_id: str, tracking_uri: str, *, what: str = "this export",
                 remedy: str = "export against this store to promote there") -> ModelVersionRef:
    """Version ``version`` of ``name`` in this store, after checking that it was registered
    from ``run_id``: an export (or a registration, ``what``) records only name and version,
    which another store (or a store made anew) may use for another model. ``remedy`` ends the
    error when the store's version comes from another run."""
    subject = f"models:/{name}/{version}"
    mismatch = f"{what} (run {run_id}) is not version {version} of {name} in {mask_url(tracking_uri)}"
    try:
        ref = resolve(subject, tracking_uri)
    except RegistryError as err:
        raise RegistryError(subject, f"{mismatch}: {err.reason}") from None
    if ref.run_id != run_id:
        raise RegistryError(subject, f"{mismatch}: that version comes from run {ref.run_id or '(none)'}; {remedy}")
    return ref


def version_tags(ref: ModelVersionRef, tracking_uri: str) -> dict[str, str]:
    client = mlflow_client(tracking_uri, ref.uri)
    return dict(call_mlflow(ref.uri, tracking_uri, "cannot read the version",
                            lambda: client.get_model_version(ref.name, ref.version)).tags)
