"""The MLflow model registry: exported ONNX models as registered versions, ``models:/`` URIs
turned into loaded classifiers, and promotion of a version to the ``champion`` alias.

A registered model is named after its dataset (``vectorai-mnist-sample``); each export is a new
version. ``champion`` is the version that prediction uses; ``previous`` the one it replaced, so
rolling back is moving ``champion`` to it. The registry lives in the MLflow tracking store (the
default SQLite store or a server); nothing here reads configuration, and MLflow is imported only
inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

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
#: What a version number from the registry must look like before it becomes a cache folder.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
#: A run id as it may appear in a registry search filter (MLflow's are 32 hex digits).
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The version tag holding the SHA-256 of its model.onnx, set when the version is created:
#: what every download and every cached copy is checked against.
SHA256_TAG = "sha256"
#: How often PromoteModel judges again when @champion moved while it evaluated, before refusing.
_MAX_REJUDGEMENTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered version, as the registry describes it."""

    name: str
    version: str
    run_id: str
    source: str
    #: The registry's SHA-256 tag of the version's model.onnx; empty for a version registered
    #: without one (before the tag existed, or by another tool).
    sha256: str = field(default="", compare=False)

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


def check_version(version: str, subject: str) -> str:
    """``version`` when it is a plain version number: it becomes a folder of the local cache, so
    whatever a server answers must not name another place."""
    if not _VERSION.fullmatch(str(version)):
        raise RegistryError(subject, f"the registry answered version {str(version)[:40]!r}, which is not a "
                            "version number (digits only)")
    return str(version)


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

    from vectorai.tracking import mlflow_credentials

    client = _client(tracking_uri, f"models:/{name}@{alias}")
    try:
        with mlflow_credentials(tracking_uri):
            return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(f"models:/{name}@{alias}", mask_error(str(err).splitlines()[0], tracking_uri)) from None


# --- registering an export --------------------------------------------------------------------


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
    _client(tracking_uri, subject)  # points MLflow at the store; a clear error for a missing one

    def log():
        with mlflow.start_run(run_id=run_id):
            return mlflow.onnx.log_model(
                model, name="onnx-model", signature=signature, input_example=example,
                save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
                # Given, not inferred: inferring them runs a child process (with the store's
                # credentials in its environment) that loads the model again.
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )

    info = _call(subject, tracking_uri, "cannot log the ONNX model", log)
    # Tags given at creation: a version never exists without its digest.
    created = _call(subject, tracking_uri, "cannot register the ONNX model",
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
    client = _client(tracking_uri, subject)
    # Both values are checked above to hold no quote: the filter cannot be rewritten by them.
    found = _call(subject, tracking_uri, f"cannot look up the versions of run {run_id}",
                  lambda: list(client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")))
    versions = sorted(found, key=lambda v: int(v.version))
    return _ref(versions[0]) if versions else None


def check_export(name: str, version: str, run_id: str, tracking_uri: str) -> ModelVersionRef:
    """Version ``version`` of ``name`` in this store, after checking that it was registered
    from ``run_id``: an export records only name and version, which another store (or a store
    made anew) may use for another model."""
    from vectorai.redact import mask_url

    subject = f"models:/{name}/{version}"
    mismatch = f"this export (run {run_id}) is not version {version} of {name} in {mask_url(tracking_uri)}"
    try:
        ref = resolve(subject, tracking_uri)
    except RegistryError as err:
        raise RegistryError(subject, f"{mismatch}: {err.reason}") from None
    if ref.run_id != run_id:
        raise RegistryError(subject, f"{mismatch}: that version comes from run {ref.run_id or '(none)'}; export "
                            "against this store to promote there")
    return ref


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
        client = _client(tracking_uri, ref.uri)  # a clear error for a missing store
        # The URI as MLflow has it: an http(s) password is lent through MLflow's own variables.
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
        digest = _sha256(found[0])
        if ref.sha256 and digest != ref.sha256:
            raise RegistryError(ref.uri, f"the downloaded model.onnx has SHA-256 {digest}, not the {ref.sha256} "
                                f"of the version's {SHA256_TAG} tag; the registry's artifact was changed or "
                                "damaged, so it is not used")
        _check_fits(OnnxClassifier(found[0], threads=1), spec, ref)
        os.replace(found[0], final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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


# --- evaluation and promotion -----------------------------------------------------------------


def evaluate(classifier: OnnxClassifier, images, labels: np.ndarray, batch_size: int = 512) -> float:
    """Accuracy of ``classifier`` on labelled raw images (preprocessed as the model's own card or
    metadata says)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ModelError(str(classifier.info.version), "no labelled images to evaluate on")
    correct = 0
    for start in range(0, len(labels), batch_size):
        batch = classifier.preprocess(images[start:start + batch_size])
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


#: The images to judge the candidate against one champion on (``None``: no champion yet): images,
#: their labels, and a record of how they were chosen.
ChooseImages = Callable[[str | None], tuple[object, np.ndarray, dict]]


def promote_version(name: str, candidate: str, *, tracking_uri: str, cache_dir: Path, images=None,
                    labels: np.ndarray | None = None, choose: ChooseImages | None = None,
                    min_improvement: float = 0.0, eval_set: str = "") -> dict[str, object]:
    """Evaluate version ``candidate`` of ``name`` and the current champion on the same labelled
    images, decide, and move the aliases when promoted (``previous`` to the old champion,
    ``champion`` to the candidate). Returns the decision record; a refusal is a normal result.
    The candidate's version gets a ``promotion`` tag with the outcome.

    The move is conditional: right before it, ``@champion`` is read again (under a lock shared
    by the processes that use this cache folder); when another promotion moved it meanwhile, the
    candidate is judged again against the new champion, and refused after
    ``_MAX_REJUDGEMENTS`` such moves. So two promotions at once end as if one ran after the other,
    and ``previous`` is the champion actually replaced.

    ``choose(champion)`` gives the images to compare the candidate with that champion on (images,
    labels and a record of how they were chosen, returned as ``compared``): a new champion may
    have trained on images the old one did not, so the set is chosen again for it. Without it,
    ``images`` and ``labels`` serve for every champion."""
    subject = f"models:/{name}/{candidate}"
    cand_ref = resolve(subject, tracking_uri)
    tags = version_tags(cand_ref, tracking_uri)
    # A foreign model has no Keras to compare with: its card was checked against the graph when
    # it was registered (vectorai.modelcard.register), which is its export check.
    parity_passed = tags.get("parity_passed", "false").lower() == "true" or tags.get("foreign") == "true"
    champion = alias_version(name, CHAMPION, tracking_uri)
    if choose is None:
        if images is None or labels is None:
            raise TypeError("promote_version needs images and labels, or choose")
        fixed = (images, labels, {})
        choose = lambda _champion: fixed  # noqa: E731 - one set for every champion

    candidate_model = load_classifier(subject, tracking_uri, cache_dir, threads=None)
    # Per champion judged: the images chosen for the pair, the candidate's and the champion's accuracy.
    judged: dict[str | None, tuple[object, np.ndarray, dict, float, float | None]] = {}
    moved: list[str | None] = []  # the champions that appeared while this promotion ran
    client = _client(tracking_uri, subject)
    while True:
        if len(moved) > _MAX_REJUDGEMENTS:
            decision = Decision(False, "refused", f"@champion moved {len(moved)} times while this promotion ran "
                                f"(last to version {champion}); run it again when promotions are quieter")
            break
        if champion not in judged:
            chosen_images, chosen_labels, compared = choose(champion)
            judged[champion] = (chosen_images, chosen_labels, compared,
                                evaluate(candidate_model, chosen_images, chosen_labels),
                                None if champion is None or champion == candidate else evaluate(
                                    load_classifier(f"models:/{name}/{champion}", tracking_uri, cache_dir),
                                    chosen_images, chosen_labels))
        _, chosen_labels, compared, candidate_accuracy, champion_accuracy = judged[champion]
        decision = decide(candidate_accuracy, champion_accuracy, parity_passed=parity_passed,
                          min_improvement=min_improvement, candidate_is_champion=champion == candidate)
        with _promotion_lock(cache_dir, tracking_uri, name):
            now = alias_version(name, CHAMPION, tracking_uri)
            if now == champion:
                if decision.promote:
                    if champion is not None:
                        _call(subject, tracking_uri, f"cannot set alias {PREVIOUS}",
                              lambda: client.set_registered_model_alias(name, PREVIOUS, champion))
                    _call(subject, tracking_uri, f"cannot set alias {CHAMPION}",
                          lambda: client.set_registered_model_alias(name, CHAMPION, candidate))
                break
        # Another promotion moved @champion after it was read: judge again against the new one.
        moved.append(now)
        champion = now
    if moved and len(moved) <= _MAX_REJUDGEMENTS:
        decision = Decision(decision.promote, decision.outcome,
                            f"{decision.reason} (judged again: @champion moved to "
                            f"{', then '.join(f'version {v}' if v else 'none' for v in moved)} meanwhile)")
    _call(subject, tracking_uri, "cannot tag the version",
          lambda: client.set_model_version_tag(name, candidate, "promotion",
                                               f"{decision.outcome}: {decision.reason}"))
    return {
        "registered_model": name,
        "candidate": {"version": candidate, "accuracy": candidate_accuracy, "run_id": cand_ref.run_id,
                      "parity_passed": parity_passed},
        "champion": ({"version": champion, "accuracy": champion_accuracy} if champion is not None else None),
        "images": int(len(chosen_labels)),
        "compared": compared,
        "eval_set": eval_set,
        "min_improvement": min_improvement,
        **asdict(decision),
        "decided_at": datetime.now(timezone.utc).isoformat(),
        "aliases": {CHAMPION: candidate if decision.promote else champion,
                    PREVIOUS: champion if decision.promote else alias_version(name, PREVIOUS, tracking_uri)},
    }


@contextlib.contextmanager
def _promotion_lock(cache_dir: Path, tracking_uri: str, name: str) -> Iterator[None]:
    """Held while @champion is read again and moved: an exclusive lock on a file in the cache
    folder, one per store and registered model. It covers the processes sharing the folder (the
    workers of one machine); promotions from other machines still see each other's moves in
    the re-read, with the two requests of the move as the only window."""
    import fcntl

    from vectorai.tracking import store_identity

    key = hashlib.sha256(f"{store_identity(tracking_uri)}\n{name}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"promote-{key}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
                     eval_set: str, champion: str | None) -> tuple[LabelledImages, dict[str, object]]:
    """``data`` less the images version ``candidate`` of ``name`` or version ``champion`` trained
    on, and a record of what was kept (see ``vectorai.split.leave_out_seen``): a comparison on
    images one of them learnt from favours that one."""
    from vectorai.errors import DatasetError
    from vectorai.split import leave_out_seen

    versions = sorted({candidate, champion} - {None})
    seen = {f"{name}/{v}": trained_on(resolve(f"models:/{name}/{v}", tracking_uri), tracking_uri) for v in versions}
    kept, compared = leave_out_seen(data, seen)
    if not compared["images"]:
        raise DatasetError(eval_set, f"all {compared['offered']} images were trained on by {' or '.join(seen)}; "
                           "none is left to compare them on")
    return kept, compared
