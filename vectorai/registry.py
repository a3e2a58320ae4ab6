"""The MLflow model registry: exported ONNX models as registered versions, ``models:/`` URIs
turned into loaded classifiers, and promotion of a version to the ``champion`` alias.

A registered model is named after its dataset (``vectorai-mnist-sample``); each export is a new
version. ``champion`` is the version that prediction uses; ``previous`` the one it replaced, so
rolling back is moving ``champion`` to it. The registry lives in the MLflow tracking store (the
default SQLite store or a server); nothing here reads configuration, and MLflow is imported only
inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

import numpy as np

from vectorai.errors import ModelError, RegistryError
from vectorai.redact import mask_error, mask_url

if TYPE_CHECKING:
    from vectorai.datasets import LabelledImages
    from vectorai.inference import OnnxClassifier
    from vectorai.preprocess import PreprocessSpec

CHAMPION = "champion"
PREVIOUS = "previous"

#: What a registered model name may hold here: it becomes a folder of the local cache.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")
#: The file beside a cached model that says where it came from and what it hashed to.
_CACHE_MANIFEST = "vectorai-cache.json"

T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered version, as the registry describes it."""

    name: str
    version: str
    run_id: str
    source: str

    @property
    def label(self) -> str:
        """``NAME/VERSION``: what each prediction row records as its model version."""
        return f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


# --- names and URIs ---------------------------------------------------------------------------


def check_model_name(name: str, what: str = "registered model") -> str:
    """``name`` when it is a usable registered model name (it also names a cache folder)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(name, f"{what} name must be 1-100 letters, digits and . _ - (not starting with . "
                            "or -)")
    return name


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as (name, alias, version)."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise RegistryError(uri, "not a model URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    check_model_name(match["name"])
    return match["name"], match["alias"], match["version"]


# --- talking to the registry ------------------------------------------------------------------


def _client(tracking_uri: str, subject: str):
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


def _call(subject: str, tracking_uri: str, what: str, action: Callable[[], T]) -> T:
    """``action()``, with whatever MLflow raises turned into one RegistryError line naming the
    store (password masked)."""
    try:
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
                           source=version.source or "")


def resolve(uri: str, tracking_uri: str) -> ModelVersionRef:
    """The registered version a ``models:/`` URI names, asked of the registry now (an alias
    follows its latest move)."""
    name, alias, version = parse_model_uri(uri)
    client = _client(tracking_uri, uri)
    if alias is not None:
        found = _call(uri, tracking_uri, f"cannot resolve alias {alias} of {name}",
                      lambda: client.get_model_version_by_alias(name, alias))
    else:
        found = _call(uri, tracking_uri, f"cannot find version {version} of {name}",
                      lambda: client.get_model_version(name, version))
    return _ref(found)


def alias_version(name: str, alias: str, tracking_uri: str) -> str | None:
    """The version ``alias`` points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri, f"models:/{name}@{alias}")
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"models:/{name}@{alias}", mask_error(str(err).splitlines()[0], tracking_uri)) from None


# --- registering an export --------------------------------------------------------------------


def register_onnx_model(onnx_path: Path, *, tracking_uri: str, run_id: str, name: str,
                        input_example: np.ndarray, tags: dict[str, object]) -> ModelVersionRef:
    """Log ``onnx_path`` as an MLflow model (onnx flavour, signature and input example) in the
    run ``run_id`` and register it as a new version of ``name``, tagged with ``tags``.

    The ONNX file is saved whole (no external data) and keeps its metadata, so the version's
    ``model.onnx`` alone is a complete vectorai model (class names, preprocessing)."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    from vectorai.inference import OnnxClassifier

    check_model_name(name)
    subject = f"models:/{name}"
    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, OnnxClassifier(onnx_path, threads=1).predict_proba(example))
    client = _client(tracking_uri, subject)

    def log():
        with mlflow.start_run(run_id=run_id):
            return mlflow.onnx.log_model(
                onnx.load(str(onnx_path)), name="onnx-model", registered_model_name=name, signature=signature,
                input_example=example, save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"],
            )

    info = _call(subject, tracking_uri, "cannot log and register the ONNX model", log)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        _call(subject, tracking_uri, f"cannot tag version {version}",
              lambda: client.set_model_version_tag(name, version, key, str(value)))
    return _ref(_call(subject, tracking_uri, f"cannot read version {version}",
                      lambda: client.get_model_version(name, version)))


def version_tags(ref: ModelVersionRef, tracking_uri: str) -> dict[str, str]:
    client = _client(tracking_uri, ref.uri)
    return dict(_call(ref.uri, tracking_uri, "cannot read the version",
                      lambda: client.get_model_version(ref.name, ref.version)).tags)


# --- the local cache --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(ref: ModelVersionRef, tracking_uri: str, cache_dir: Path,
                spec: PreprocessSpec | None = None) -> Path:
    """The version's ``model.onnx`` in ``cache_dir/NAME/VERSION/``, downloaded the first time.

    A download goes to a temporary folder beside its final place and is renamed into place only
    after the model loaded with onnxruntime (and fits ``spec``, when given), so the cache never
    holds half a model. A cached copy is used when its manifest names the same registered
    version (same run and source: another store's version 3 is another model) and the file
    still has the SHA-256 recorded at download; otherwise it is downloaded again."""
    from vectorai.inference import OnnxClassifier

    check_model_name(ref.name)
    final = Path(cache_dir) / ref.name / ref.version
    expected = {"name": ref.name, "version": ref.version, "run_id": ref.run_id, "source": ref.source}
    if _cached_copy_is_good(final, expected):
        path = final / "model.onnx"
        _check_fits(OnnxClassifier(path, threads=1), spec, ref)
        return path

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=final.parent))
    try:
        client = _client(tracking_uri, ref.uri)  # a clear error for a missing store
        # The URI as MLflow has it: an http(s) password is in MLflow's own variables instead.
        store = client.tracking_uri

        def download() -> str:
            import mlflow.artifacts

            # One line in a task's log, not a progress bar per file.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            return mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(tmp), tracking_uri=store,
                                                       registry_uri=store)

        _call(ref.uri, tracking_uri, "cannot download the model", download)
        found = sorted(tmp.rglob("model.onnx"))
        if not found:
            raise RegistryError(ref.uri, "the registered version has no model.onnx (not an ONNX model logged "
                                "by ExportOnnx)")
        model_dir = found[0].parent
        _check_fits(OnnxClassifier(model_dir / "model.onnx", threads=1), spec, ref)
        manifest = {**expected, "sha256": _sha256(model_dir / "model.onnx"), "tracking_uri": mask_url(tracking_uri)}
        (model_dir / _CACHE_MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():
            # Another process cached it meanwhile, or the old copy was stale: replace it.
            shutil.rmtree(final, ignore_errors=True)
        os.replace(model_dir, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.onnx"


def _cached_copy_is_good(folder: Path, expected: dict[str, str]) -> bool:
    try:
        manifest = json.loads((folder / _CACHE_MANIFEST).read_text())
        return (all(manifest.get(key) == value for key, value in expected.items())
                and manifest.get("sha256") == _sha256(folder / "model.onnx"))
    except (OSError, ValueError):
        return False


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


# --- evaluation and promotion -----------------------------------------------------------------


def evaluate(classifier: OnnxClassifier, images, labels: np.ndarray, batch_size: int = 512) -> float:
    """Accuracy of ``classifier`` on labelled raw images (preprocessed with its own spec)."""
    from vectorai.preprocess import preprocess_images

    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ModelError(str(classifier.info.version), "no labelled images to evaluate on")
    correct = 0
    for start in range(0, len(labels), batch_size):
        batch = preprocess_images(images[start:start + batch_size], classifier.spec)
        correct += int(np.sum(classifier.predict_proba(batch).argmax(axis=1) == labels[start:start + batch_size]))
    return correct / len(labels)


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str  # "promoted", "refused" or "kept" (the candidate already is the champion)
    reason: str


def decide(candidate_accuracy: float, champion_accuracy: float | None, *, parity_passed: bool,
           min_improvement: float = 0.0, candidate_is_champion: bool = False) -> Decision:
    """Whether the candidate becomes champion: when there is none yet, or when its accuracy is
    at least the champion's plus ``min_improvement`` and its ONNX export passed parity."""
    if candidate_is_champion:
        return Decision(False, "kept", "the candidate already is the champion")
    if not parity_passed:
        return Decision(False, "refused", "its ONNX export did not pass the parity check against Keras")
    if champion_accuracy is None:
        return Decision(True, "promoted", "there was no champion yet")
    needed = champion_accuracy + min_improvement
    comparison = (f"accuracy {candidate_accuracy:.4f} against the champion's {champion_accuracy:.4f}"
                  f"{f' + {min_improvement:g}' if min_improvement else ''}")
    # A tolerance for float sums (0.9 + 0.05): equal accuracies with min_improvement 0 promote.
    if candidate_accuracy + 1e-12 >= needed:
        return Decision(True, "promoted", comparison)
    return Decision(False, "refused", f"{comparison}: below the {needed:.4f} needed")


def promote_version(name: str, candidate: str, *, tracking_uri: str, images, labels: np.ndarray,
                    cache_dir: Path, min_improvement: float = 0.0,
                    eval_set: str = "") -> dict[str, object]:
    """Evaluate version ``candidate`` of ``name`` and the current champion on the same labelled
    images, decide, and move the aliases when promoted (``previous`` to the old champion,
    ``champion`` to the candidate). Returns the decision record; a refusal is a normal result.
    The candidate's version gets a ``promotion`` tag with the outcome."""
    subject = f"models:/{name}/{candidate}"
    cand_ref = resolve(subject, tracking_uri)
    tags = version_tags(cand_ref, tracking_uri)
    parity_passed = tags.get("parity_passed", "false").lower() == "true"
    champion = alias_version(name, CHAMPION, tracking_uri)

    candidate_accuracy = evaluate(load_classifier(subject, tracking_uri, cache_dir, threads=None), images, labels)
    champion_accuracy = None
    if champion is not None and champion != candidate:
        champion_accuracy = evaluate(load_classifier(f"models:/{name}/{champion}", tracking_uri, cache_dir),
                                     images, labels)
    decision = decide(candidate_accuracy, champion_accuracy, parity_passed=parity_passed,
                      min_improvement=min_improvement, candidate_is_champion=champion == candidate)

    client = _client(tracking_uri, subject)
    if decision.promote:
        if champion is not None:
            _call(subject, tracking_uri, f"cannot set alias {PREVIOUS}",
                  lambda: client.set_registered_model_alias(name, PREVIOUS, champion))
        _call(subject, tracking_uri, f"cannot set alias {CHAMPION}",
              lambda: client.set_registered_model_alias(name, CHAMPION, candidate))
    _call(subject, tracking_uri, "cannot tag the version",
          lambda: client.set_model_version_tag(name, candidate, "promotion",
                                               f"{decision.outcome}: {decision.reason}"))
    return {
        "registered_model": name,
        "candidate": {"version": candidate, "accuracy": candidate_accuracy, "run_id": cand_ref.run_id,
                      "parity_passed": parity_passed},
        "champion": ({"version": champion, "accuracy": champion_accuracy if champion != candidate
                      else candidate_accuracy} if champion is not None else None),
        "images": int(len(labels)),
        "eval_set": eval_set,
        "min_improvement": min_improvement,
        **asdict(decision),
        "decided_at": datetime.now(timezone.utc).isoformat(),
        "aliases": {CHAMPION: candidate if decision.promote else champion,
                    PREVIOUS: champion if decision.promote else alias_version(name, PREVIOUS, tracking_uri)},
    }


def log_decision(record: dict[str, object], *, tracking_uri: str, run_id: str, artifact_file: str) -> None:
    """Attach the decision record to the candidate's training run."""
    import mlflow

    from vectorai.tracking import use_tracking_uri

    def log() -> None:
        use_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_dict(record, artifact_file)

    _call(f"models:/{record['registered_model']}", tracking_uri, "cannot log the promotion decision", log)


# --- what each version trained on -------------------------------------------------------------

#: The artifact, in a version's training run, listing the content digests (``vectorai.split``)
#: of every image the version trained or validated on, one a line, sorted.
TRAINED_ON_ARTIFACT = "split/trained_on.txt"


def record_training_set(digests: Iterable[str], *, tracking_uri: str, run_id: str) -> dict[str, str]:
    """Log the images a model trained on (their digests) to its run; the version tags that name
    that artifact and its SHA-256, so PromoteModel can leave those images out of a comparison."""
    import mlflow

    from vectorai.split import set_digest
    from vectorai.tracking import use_tracking_uri

    unique = sorted(set(digests))

    def log() -> None:
        use_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_text("".join(f"{d}\n" for d in unique), TRAINED_ON_ARTIFACT)

    _call(f"runs:/{run_id}", tracking_uri, "cannot log the training set's digests", log)
    return {"trained_on_artifact": TRAINED_ON_ARTIFACT, "trained_on_digest": set_digest(unique),
            "trained_on_images": str(len(unique))}


def trained_on(ref: ModelVersionRef, tracking_uri: str) -> frozenset[str] | None:
    """The digests of the images version ``ref`` trained on, checked against its tag; None for
    a version registered before vectorai recorded them."""
    from vectorai.split import set_digest

    tags = version_tags(ref, tracking_uri)
    if "trained_on_digest" not in tags:
        return None
    client = _client(tracking_uri, ref.uri)
    store = client.tracking_uri
    artifact = tags.get("trained_on_artifact", TRAINED_ON_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="vectorai-trained-on-") as tmp:
        def download() -> str:
            import mlflow.artifacts

            return mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{ref.run_id}/{artifact}", dst_path=tmp,
                                                       tracking_uri=store)

        text = Path(_call(ref.uri, tracking_uri, "cannot download its training set's digests", download)).read_text()
    digests = frozenset(text.split())
    if set_digest(digests) != tags["trained_on_digest"]:
        raise RegistryError(ref.uri, f"its {artifact} does not match the version's trained_on_digest tag: the "
                            "record of what it trained on was changed")
    return digests


def unseen_by_either(name: str, candidate: str, data: LabelledImages, *, tracking_uri: str,
                     eval_set: str) -> tuple[LabelledImages, dict[str, object]]:
    """``data`` less the images version ``candidate`` of ``name`` or the current champion trained
    on, and a record of what was kept (see ``vectorai.split.leave_out_seen``): a comparison on
    images one of them learnt from favours that one."""
    from vectorai.errors import DatasetError
    from vectorai.split import leave_out_seen

    versions = sorted({candidate, alias_version(name, CHAMPION, tracking_uri)} - {None})
    seen = {f"{name}/{v}": trained_on(resolve(f"models:/{name}/{v}", tracking_uri), tracking_uri) for v in versions}
    kept, compared = leave_out_seen(data, seen)
    if not compared["images"]:
        raise DatasetError(eval_set, f"all {compared['offered']} images were trained on by {' or '.join(seen)}; "
                           "none is left to compare them on")
    return kept, compared
