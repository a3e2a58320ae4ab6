"""The order in which a person should review predictions ("review next").

A correction teaches the model most where it is least sure, where a second model disagrees and
where the stream has changed; a page of one class teaches it little, so the order takes turns
over the predicted classes. The page (``ranked.review_next_page``) reads each class's best
candidates from its indexes and orders them with ``review_order`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What the order knows of one prediction."""

    #: Top-1 minus top-2 class probability, in [0, 1]: small means unsure.
    margin: float
    predicted_class: int
    #: The shadow model predicted another class for the same message.
    shadow_disagrees: bool = False
    #: Predicted during a run whose report flags drift.
    drifted: bool = False


def priority_key(candidate: Candidate) -> tuple[bool, bool, float]:
    """Sort key within a class, smaller first: a drifted run's rows, then the shadow's
    disagreements, then the smallest margin. The flags outrank the margin because each marks
    a kind of image the model has not learned, whatever its own confidence says."""
    return (not candidate.drifted, not candidate.shadow_disagrees, candidate.margin)


def review_order(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of ``candidates``, best to review first.

    Round r takes every class's r-th best candidate (by ``priority_key``), and orders that
    round by the same key, so a page holds each class in turn and the most urgent first.
    Ties go to the lower index, so the order is deterministic.
    """
    by_class: dict[int, list[int]] = {}
    for index in sorted(range(len(candidates)), key=lambda i: (priority_key(candidates[i]), i)):
        by_class.setdefault(candidates[index].predicted_class, []).append(index)
    ranked = [(rank, priority_key(candidates[index]), index)
              for indices in by_class.values() for rank, index in enumerate(indices)]
    return [index for _, _, index in sorted(ranked)]
