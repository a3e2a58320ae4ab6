"""A run's drift test: the loop hands each committed batch's outputs here, which tallies them
for the whole run and for the current window of ``window`` images, and tests each window
against the model's reference when it fills (``vectorai.drift``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vectorai.drift import DEFAULT_THRESHOLD, MIN_TEST_IMAGES, DriftResult, OutputSummary, Tally, drift_test

#: Windows listed in the report; older ones are counted in ``drifted_windows`` only.
MAX_LISTED_WINDOWS = 100
#: Why a run has no test: the model has no reference.
NO_REFERENCE = ("the model has no reference (exported before references were stored, or registered without an "
                "eval file): no drift test, the estimate still shown")
#: Said beside the estimate whenever a window drifted.
UNRELIABLE = "drift flagged: the estimated accuracy assumes images like the reference's and is unreliable"


class DriftMonitor:
    """Tallies of a run's outputs, and a drift test per window of ``window`` images (the run's
    last, shorter window too, once it has ``MIN_TEST_IMAGES``)."""

    def __init__(self, reference: OutputSummary | None, classes: int, *, window: int = 1000,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        self.reference, self.window, self.threshold = reference, max(1, window), threshold
        self._classes = classes
        self._current = Tally(classes)
        #: The closed windows' images, confidence sum, labelled and correct: with the current
        #: window's, the run's (one tally per batch, not a second one for the whole run).
        self._closed: tuple[int, float, int, int] = (0, 0.0, 0, 0)
        self._first = 0  # the run's image number the current window starts at
        self.windows: list[dict[str, object]] = []
        self.tested_windows = self.drifted_windows = 0
        self._worst: DriftResult | None = None
        if reference is not None:
            # scipy.special takes 0.1-2 s to import: here, before the loop's clock starts, not
            # at the first window, where it would hold up the batches behind it.
            import scipy.special  # noqa: F401

    def add(self, probabilities: np.ndarray, rows: Sequence[dict[str, object]]) -> bool:
        """A committed batch: the model's (calibrated) output of each row, and the rows (their
        ``true_label``). True when a window was tested."""
        labels = np.fromiter((-1 if row["true_label"] is None else row["true_label"] for row in rows),
                             np.int64, len(rows))
        tested, start = False, 0
        while start < len(labels):
            take = min(len(labels) - start, self.window - self._current.images)
            self._current.add(probabilities[start:start + take], labels[start:start + take])
            start += take
            if self._current.images >= self.window:
                self._close_window()
                tested = True
        return tested

    def finish(self) -> dict[str, object]:
        """Test the last window (when it has enough images); the run's summary."""
        if self._current.images >= MIN_TEST_IMAGES or (self._current.images and not self.windows):
            self._close_window()
        return self.summary()

    def _close_window(self) -> None:
        tally = self._current
        entry: dict[str, object] = {"first": self._first, "images": tally.images,
                                    "estimated_accuracy": _rounded(tally.estimated_accuracy),
                                    "measured_accuracy": _rounded(tally.measured_accuracy)}
        if self.reference is not None:
            result = drift_test(tally.summary(), self.reference, self.threshold)
            entry.update(score=result.score, p_value=result.p_value, drifted=result.drifted)
            self.tested_windows += result.p_value is not None
            self.drifted_windows += result.drifted
            if self._worst is None or _worse(result, self._worst):
                self._worst = result
        self.windows = (self.windows + [entry])[-MAX_LISTED_WINDOWS:]
        images, confidence, labelled, correct = self._closed
        self._closed = (images + tally.images, confidence + tally.confidence_sum, labelled + tally.labelled,
                        correct + tally.correct)
        self._first += tally.images
        self._current = Tally(self._classes)

    def summary(self) -> dict[str, object]:
        """The report's ``drift``: the worst window's score and p-value, flagged when any window
        drifted, the whole run's estimated and measured accuracy, and each window."""
        worst, current = self._worst, self._current
        images, confidence, labelled, correct = self._closed
        images, confidence = images + current.images, confidence + current.confidence_sum
        labelled, correct = labelled + current.labelled, correct + current.correct
        out: dict[str, object] = {
            "score": worst.score if worst else None,
            "p_value": worst.p_value if worst else None,
            "drifted": bool(self.drifted_windows),
            "estimated_accuracy": _rounded(confidence / images if images else None),
            "measured_accuracy": _rounded(correct / labelled if labelled else None),
            "window": self.window,
            "threshold": self.threshold,
            "images": images,
            "tested_windows": self.tested_windows,
            "drifted_windows": self.drifted_windows,
        }
        if worst is not None:
            out["distances"] = worst.distances
        if self.reference is None:
            out["note"] = NO_REFERENCE
        else:
            out["reference"] = {"images": self.reference.images, "source": self.reference.source}
            if self.drifted_windows:
                out["note"] = UNRELIABLE
        out["windows"] = self.windows
        return out


def _worse(a: DriftResult, b: DriftResult) -> bool:
    """Whether ``a`` is more of a drift than ``b``: a smaller p-value, then a larger score."""
    pa = 2.0 if a.p_value is None else a.p_value
    pb = 2.0 if b.p_value is None else b.p_value
    return (pa, -a.score) < (pb, -b.score)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
