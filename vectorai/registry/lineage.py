"""What each version trained on: the content digests of its training images, logged to its run
and named by its version tags, so a comparison can leave out the images either model learnt from."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from vectorai.errors import RegistryError
from vectorai.registry.client import call_mlflow, mlflow_client, resolve, version_tags
from vectorai.registry.names import ModelVersionRef
from vectorai.registry.origin import checked_location

if TYPE_CHECKING:
    from vectorai.datasets import LabelledImages

#: The artifact, in a version's training run, listing the content digests (``vectorai.split``)
#: of every image the version trained or validated on, one a line, sorted.
TRAINED_ON_ARTIFACT = "split/trained_on.txt"


def record_training_set(digests: Iterable[str], *, tracking_uri: str, run_id: str) -> dict[str, str]:
    """Log the images a model trained on (their digests) to its run; the version tags that name
    that artifact and its SHA-256, so PromoteModel can leave those images out of a comparison."""
    from vectorai.split import set_digest

    unique = sorted(set(digests))

    def log() -> None:
        # Through the client, not mlflow.start_run: that refuses a run outside the process's
        # active experiment (one a caller may have set for its own runs).
        client = mlflow_client(tracking_uri, f"runs:/{run_id}")
        client.log_text(run_id, "".join(f"{d}\n" for d in unique), TRAINED_ON_ARTIFACT)

    call_mlflow(f"runs:/{run_id}", tracking_uri, "cannot log the training set's digests", log)
    return {"trained_on_artifact": TRAINED_ON_ARTIFACT, "trained_on_digest": set_digest(unique),
            "trained_on_images": str(len(unique))}


def trained_on(ref: ModelVersionRef, tracking_uri: str) -> frozenset[str] | None:
    """The digests of the images version ``ref`` trained on, checked against its tag; None for
    a version registered before vectorai recorded them."""
    from vectorai.split import set_digest

    tags = version_tags(ref, tracking_uri)
    if "trained_on_digest" not in tags:
        return None
    client = mlflow_client(tracking_uri, ref.uri)
    store = client.tracking_uri
    artifact = tags.get("trained_on_artifact", TRAINED_ON_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="vectorai-trained-on-") as tmp:
        def download() -> str:
            import mlflow.artifacts

            location = checked_location(ref.uri, f"runs:/{ref.run_id}/{artifact}", store)
            return mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=store)

        text = Path(call_mlflow(ref.uri, tracking_uri, "cannot download its training set's digests",
                                download)).read_text()
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
