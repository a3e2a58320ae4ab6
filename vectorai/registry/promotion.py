"""Promotion: a candidate version judged against ``@champion`` on the same labelled images, and
the ``champion`` and ``previous`` aliases moved when it is at least as good.

``champion`` is the version that prediction uses; ``previous`` the one it replaced, so rolling
back is moving ``champion`` to it.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from vectorai.errors import ModelError
from vectorai.registry.cache import load_classifier
from vectorai.registry.client import alias_version, call_mlflow, mlflow_client, resolve, version_tags
from vectorai.registry.names import CHAMPION, PREVIOUS

if TYPE_CHECKING:
    from vectorai.inference import OnnxClassifier

#: How often PromoteModel judges again when @champion moved while it evaluated, before refusing.
_MAX_REJUDGEMENTS = 3


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


@dataclass(frozen=True)
class Judgement:
    """The candidate judged against one champion: on how many images, chosen how, and the two
    accuracies (the champion's None when there is none, or it is the candidate)."""

    images: int
    compared: dict
    candidate_accuracy: float
    champion_accuracy: float | None


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
    cand_ref = resolve(f"models:/{name}/{candidate}", tracking_uri)
    tags = version_tags(cand_ref, tracking_uri)
    # A foreign model has no Keras to compare with: its card was checked against the graph when
    # it was registered (vectorai.registry.foreign), which is its export check.
    parity_passed = tags.get("parity_passed", "false").lower() == "true" or tags.get("foreign") == "true"
    champion = alias_version(name, CHAMPION, tracking_uri)
    if choose is None:
        if images is None or labels is None:
            raise TypeError("promote_version needs images and labels, or choose")
        fixed = (images, labels, {})
        choose = lambda _champion: fixed  # noqa: E731 - one set for every champion

    promotion = _Promotion(name, candidate, tracking_uri=tracking_uri, cache_dir=cache_dir, choose=choose,
                           parity_passed=parity_passed, min_improvement=min_improvement)
    decision, judgement, champion = promotion.settle(champion)
    promotion.tag(decision)
    return {
        "registered_model": name,
        "candidate": {"version": candidate, "accuracy": judgement.candidate_accuracy, "run_id": cand_ref.run_id,
                      "parity_passed": parity_passed},
        "champion": ({"version": champion, "accuracy": judgement.champion_accuracy}
                     if champion is not None else None),
        "images": judgement.images,
        "compared": judgement.compared,
        "eval_set": eval_set,
        "min_improvement": min_improvement,
        **asdict(decision),
        "decided_at": datetime.now(timezone.utc).isoformat(),
        "aliases": {CHAMPION: candidate if decision.promote else champion,
                    PREVIOUS: champion if decision.promote else alias_version(name, PREVIOUS, tracking_uri)},
    }


class _Promotion:
    """One candidate's promotion: its judgements against each champion seen, and the champions
    that appeared while it ran."""

    def __init__(self, name: str, candidate: str, *, tracking_uri: str, cache_dir: Path, choose: ChooseImages,
                 parity_passed: bool, min_improvement: float) -> None:
        self.name, self.candidate = name, candidate
        self.tracking_uri, self.cache_dir = tracking_uri, cache_dir
        self.choose, self.parity_passed, self.min_improvement = choose, parity_passed, min_improvement
        self.subject = f"models:/{name}/{candidate}"
        self.candidate_model = load_classifier(self.subject, tracking_uri, cache_dir, threads=None)
        self.judged: dict[str | None, Judgement] = {}
        self.moved: list[str | None] = []
        self.client = mlflow_client(tracking_uri, self.subject)

    def settle(self, champion: str | None) -> tuple[Decision, Judgement, str | None]:
        """Judge against ``champion`` and move the aliases if it still holds ``@champion``; when
        another promotion moved it meanwhile, judge again against the new one. Returns the
        decision, the last judgement made and the champion the decision is about."""
        while len(self.moved) <= _MAX_REJUDGEMENTS:
            judgement = self.judge(champion)
            decision = decide(judgement.candidate_accuracy, judgement.champion_accuracy,
                              parity_passed=self.parity_passed, min_improvement=self.min_improvement,
                              candidate_is_champion=champion == self.candidate)
            now = self.move_if_still(champion, decision)
            if now == champion:
                if self.moved:
                    decision = Decision(decision.promote, decision.outcome,
                                        f"{decision.reason} (judged again: @champion moved to "
                                        f"{', then '.join(f'version {v}' if v else 'none' for v in self.moved)} "
                                        "meanwhile)")
                return decision, judgement, champion
            # Another promotion moved @champion after it was read: judge again against the new one.
            self.moved.append(now)
            champion = now
        return (Decision(False, "refused", f"@champion moved {len(self.moved)} times while this promotion ran "
                         f"(last to version {champion}); run it again when promotions are quieter"),
                judgement, champion)

    def judge(self, champion: str | None) -> Judgement:
        """The candidate against ``champion`` on the images chosen for the pair, judged once."""
        if champion not in self.judged:
            images, labels, compared = self.choose(champion)
            candidate_accuracy = evaluate(self.candidate_model, images, labels)
            champion_accuracy = None if champion is None or champion == self.candidate else evaluate(
                load_classifier(f"models:/{self.name}/{champion}", self.tracking_uri, self.cache_dir), images, labels)
            self.judged[champion] = Judgement(int(len(labels)), compared, candidate_accuracy, champion_accuracy)
        return self.judged[champion]

    def move_if_still(self, champion: str | None, decision: Decision) -> str | None:
        """Under the lock, read ``@champion`` again and, when it still is ``champion``, carry out
        ``decision``. Returns the champion read."""
        with _promotion_lock(self.cache_dir, self.tracking_uri, self.name):
            now = alias_version(self.name, CHAMPION, self.tracking_uri)
            if now == champion and decision.promote:
                if champion is not None:
                    self._set_alias(PREVIOUS, champion)
                self._set_alias(CHAMPION, self.candidate)
        return now

    def _set_alias(self, alias: str, version: str) -> None:
        call_mlflow(self.subject, self.tracking_uri, f"cannot set alias {alias}",
                    lambda: self.client.set_registered_model_alias(self.name, alias, version))

    def tag(self, decision: Decision) -> None:
        """The candidate's ``promotion`` tag: the outcome and its reason."""
        call_mlflow(self.subject, self.tracking_uri, "cannot tag the version",
                    lambda: self.client.set_model_version_tag(self.name, self.candidate, "promotion",
                                                              f"{decision.outcome}: {decision.reason}"))


@contextlib.contextmanager
def _promotion_lock(cache_dir: Path, tracking_uri: str, name: str) -> Iterator[None]:
    """Held while @champion is read again and moved: an exclusive lock on a file in the cache
    folder, one per store and registered model. It covers the processes sharing the folder (the
    workers of one machine, ``--local-scheduler`` runs); across hosts the tasks hold a Luigi
    resource of the model, so luigid runs one promotion of it at a time (tasks.common)."""
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

    call_mlflow(f"models:/{record['registered_model']}", tracking_uri, "cannot log the promotion decision", log)
