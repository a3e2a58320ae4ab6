"""Has the stream changed? A black-box test of a classifier's outputs against a reference.

A model's reference is a summary of its (calibrated) outputs on images it did not train on: how
many it gave each class, a histogram of its top-1 confidence, and its mean probability vector.
A stream's outputs are summarised the same way and compared with two chi-square tests of
homogeneity (class mix, confidence histogram), Bonferroni-corrected. Nothing here looks inside
the model, so it works for any classifier (Rabanser et al., "Failing Loudly", 2019: black-box
shift detection on the softmax outputs). Summaries are counts, never the outputs themselves:
a reference is a few hundred bytes however many images it was made on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

#: Edges of the confidence histogram: finer near 1, where a good model puts most of its images.
CONFIDENCE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
#: The p-value under which a window is flagged, unless configured (PredictTask drift_threshold).
DEFAULT_THRESHOLD = 0.01
#: Fewer images than this are not tested (a chi-square test needs a few expected in each cell).
MIN_TEST_IMAGES = 30
#: A cell of a test table is merged into its neighbour until its expected count is at least this.
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class OutputSummary:
    """A classifier's outputs on some images, as counts and sums."""

    images: int
    class_counts: list[int]
    confidence_counts: list[int]
    mean_probabilities: list[float]
    #: What the images were (a reference's: "validation split", an eval file's name).
    source: str = ""
    confidence_edges: list[float] = field(default_factory=lambda: list(CONFIDENCE_EDGES))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> OutputSummary:
        values = json.loads(text)
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


def summarise(probabilities: np.ndarray, source: str = "") -> OutputSummary:
    """``probabilities`` (N, K), e.g. a model's on its validation split, as an ``OutputSummary``."""
    tally = Tally(probabilities.shape[1])
    tally.add(probabilities, np.full(len(probabilities), -1))
    return tally.summary(source)


class Tally:
    """Running counts of a stream's outputs: what ``summarise`` gives, added to a batch at a time
    (a few numpy calls per batch, nothing per image in Python)."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.images = self.labelled = self.correct = 0
        self.confidence_sum = 0.0
        self.class_counts = np.zeros(classes, np.int64)
        self.confidence_counts = np.zeros(len(CONFIDENCE_EDGES) - 1, np.int64)
        self.probability_sum = np.zeros(classes, np.float64)

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        """One batch's outputs (N, K) and labels (-1: none)."""
        if not len(probabilities):
            return
        classes = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(classes)), classes]
        self.images += len(classes)
        self.class_counts += np.bincount(classes, minlength=self.classes)[:self.classes]
        bins = np.searchsorted(CONFIDENCE_EDGES[1:-1], confidence, side="right")
        self.confidence_counts += np.bincount(bins, minlength=len(self.confidence_counts))
        self.probability_sum += probabilities.sum(axis=0, dtype=np.float64)
        self.confidence_sum += float(confidence.sum(dtype=np.float64))
        known = labels >= 0
        self.labelled += int(known.sum())
        self.correct += int((classes[known] == labels[known]).sum())

    def summary(self, source: str = "") -> OutputSummary:
        mean = self.probability_sum / self.images if self.images else self.probability_sum
        return OutputSummary(self.images, self.class_counts.tolist(), self.confidence_counts.tolist(),
                             [round(float(v), 6) for v in mean], source)

    @property
    def estimated_accuracy(self) -> float | None:
        """The mean calibrated confidence: what a calibrated model expects its accuracy to be."""
        return self.confidence_sum / self.images if self.images else None

    @property
    def measured_accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class DriftResult:
    """One test of a stream's outputs against the reference."""

    #: Largest total-variation distance between stream and reference among the class mix, the
    #: confidence histogram and the mean probability vector: 0 the same, 1 nothing in common.
    score: float
    #: Bonferroni-corrected p-value of the two chi-square tests; None: too few images to test.
    p_value: float | None
    drifted: bool
    distances: dict[str, float]


def total_variation(a: Sequence[float], b: Sequence[float]) -> float:
    """Half the L1 distance between two histograms, each normalised to sum to 1."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.sum() <= 0 or y.sum() <= 0:
        return 0.0
    return float(0.5 * np.abs(x / x.sum() - y / y.sum()).sum())


def _merged(stream: np.ndarray, reference: np.ndarray, adjacent: bool) -> np.ndarray:
    """A 2 x cells table whose every expected count is at least MIN_EXPECTED, by merging cells:
    neighbours (``adjacent``: an ordered histogram) or the rarest together (class counts)."""
    table = np.vstack([stream, reference]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    need = MIN_EXPECTED * table.sum() / max(table.sum(axis=1).min(), 1.0)
    if not adjacent:
        table = table[:, np.argsort(table.sum(axis=0), kind="stable")]
    columns: list[np.ndarray] = []
    pending = np.zeros(2)
    for column in table.T:
        pending = pending + column
        if pending.sum() >= need:
            columns.append(pending)
            pending = np.zeros(2)
    if pending.sum() > 0:
        if columns:
            columns[-1] = columns[-1] + pending
        else:
            columns.append(pending)
    return np.array(columns).T


def _chi_square_p(stream: Sequence[int], reference: Sequence[int], adjacent: bool) -> float:
    """Pearson's chi-square test of homogeneity of the two rows (``scipy.stats.chi2_contingency``
    without Yates' correction: the same statistic and p-value, tested against it, in a tenth of
    its time; it runs once per window on the loop's thread)."""
    from scipy.special import chdtrc

    table = _merged(np.asarray(stream), np.asarray(reference), adjacent)
    if table.shape[1] < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return float(chdtrc(table.shape[1] - 1, statistic))


def drift_test(stream: OutputSummary, reference: OutputSummary, threshold: float = DEFAULT_THRESHOLD) -> DriftResult:
    """Compare ``stream`` with ``reference``: drifted when the corrected p-value is below ``threshold``."""
    distances = {
        "class_mix": total_variation(stream.class_counts, reference.class_counts),
        "confidence": total_variation(stream.confidence_counts, reference.confidence_counts),
        "mean_probabilities": total_variation(stream.mean_probabilities, reference.mean_probabilities),
    }
    score = round(max(distances.values()), 4)
    distances = {key: round(value, 4) for key, value in distances.items()}
    if stream.images < MIN_TEST_IMAGES or list(stream.confidence_edges) != list(reference.confidence_edges):
        return DriftResult(score, None, False, distances)
    tests = (_chi_square_p(stream.class_counts, reference.class_counts, adjacent=False),
             _chi_square_p(stream.confidence_counts, reference.confidence_counts, adjacent=True))
    p_value = min(1.0, len(tests) * min(tests))
    return DriftResult(score, p_value, p_value < threshold, distances)
