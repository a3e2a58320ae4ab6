"""The local cache of registered models: each version's ``model.onnx`` downloaded once into
``cache_dir/NAME/VERSION/`` and used only when it has the registry's SHA-256."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vectorai.errors import ModelError, RegistryError
from vectorai.registry.client import call_mlflow, mlflow_client, resolve
from vectorai.registry.names import SHA256_TAG, ModelVersionRef, check_model_name, check_version
from vectorai.registry.origin import checked_location

if TYPE_CHECKING:
    from vectorai.inference import OnnxClassifier
    from vectorai.preprocess import PreprocessSpec


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(ref: ModelVersionRef, tracking_uri: str, cache_dir: Path,
                spec: PreprocessSpec | None = None) -> Path:
    """The version's ``model.onnx`` in ``cache_dir/NAME/VERSION/``, downloaded the first time.

    What a file is checked against is the registry's SHA-256 tag of the version, never something
    written beside the file: a cached copy is used only when it has that digest, and a download
    only when it has it too (else one error naming both). A download goes to a temporary folder
    of its own and its model.onnx is moved into place with one atomic rename, so processes that
    download at once all end with the same checked file and none removes a file another reads.
    A version without the tag (registered before it existed) is downloaded each time, since
    nothing local may stand in for it."""
    from vectorai.inference import OnnxClassifier

    check_model_name(ref.name)
    folder = Path(cache_dir) / ref.name / check_version(ref.version, f"models:/{ref.name}")
    final = folder / "model.onnx"
    if ref.sha256 and _sha256_or_none(final) == ref.sha256:
        _check_fits(OnnxClassifier(final, threads=1), spec, ref)
        return final

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        downloaded = _download(ref, tracking_uri, tmp)
        _check_fits(OnnxClassifier(downloaded, threads=1), spec, ref)
        os.replace(downloaded, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _download(ref: ModelVersionRef, tracking_uri: str, tmp: Path) -> Path:
    """The version's model.onnx downloaded under ``tmp``, checked against its SHA-256 tag."""
    client = mlflow_client(tracking_uri, ref.uri)  # a clear error for a missing store
    # The URI as MLflow has it: an http(s) password is lent through MLflow's own variables.
    store = client.tracking_uri

    def download() -> str:
        import mlflow.artifacts

        # Checked first, then read from that very location: the credentials reach no other host.
        location = checked_location(ref.uri, client.get_model_version_download_uri(ref.name, ref.version), store)
        # One line in a task's log, not a progress bar per file.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp), tracking_uri=store,
                                                   registry_uri=store)

    call_mlflow(ref.uri, tracking_uri, "cannot download the model", download)
    found = sorted(tmp.rglob("model.onnx"))
    if not found:
        raise RegistryError(ref.uri, "the registered version has no model.onnx (not an ONNX model logged "
                            "by ExportOnnx)")
    digest = _sha256(found[0])
    if ref.sha256 and digest != ref.sha256:
        raise RegistryError(ref.uri, f"the downloaded model.onnx has SHA-256 {digest}, not the {ref.sha256} "
                            f"of the version's {SHA256_TAG} tag; the registry's artifact was changed or "
                            "damaged, so it is not used")
    return found[0]


def _sha256_or_none(path: Path) -> str | None:
    try:
        return _sha256(path)
    except OSError:
        return None


def _check_fits(classifier: OnnxClassifier, spec: PreprocessSpec | None, ref: ModelVersionRef) -> None:
    if spec is not None and spec != classifier.spec:
        have = classifier.spec
        raise ModelError(ref.uri, f"model expects {have.height}x{have.width}x{have.channels} images but the "
                         f"configuration says {spec.height}x{spec.width}x{spec.channels}")


def load_classifier(uri: str, tracking_uri: str, cache_dir: Path, spec: PreprocessSpec | None = None,
                    threads: int | None = None) -> OnnxClassifier:
    """The classifier a ``models:/`` URI names: resolved now, cached by version, checked to fit
    ``spec`` (when given); its ``info.version`` is ``NAME/VERSION``."""
    from vectorai.inference import OnnxClassifier

    ref = resolve(uri, tracking_uri)
    path = fetch_model(ref, tracking_uri, cache_dir, spec)
    return OnnxClassifier(path, threads=threads, version=ref.label)
