"""What a run did: the counts per source, and the run's totals derived from them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Sequence


@dataclass
class SourceCounts:
    """One source's share of a run: ``consumed = predicted + already_predicted + duplicates +
    dead_letters`` once its batches are committed."""

    consumed: int = 0
    predicted: int = 0
    already_predicted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    #: Rows with a label, those the model got right, and the shadow model's figures (if any).
    labelled: int = 0
    correct: int = 0
    shadow_scored: int = 0
    shadow_agreed: int = 0
    shadow_correct: int = 0
    #: Batches the shadow model failed on, gave a non-finite output for some images of (those
    #: have no shadow row), or whose shadow rows the database refused (best effort: their primary
    #: rows are stored anyway). One per batch at most.
    shadow_errors: int = 0

    def to_dict(self) -> dict[str, object]:
        """The counts, then the ratios there is something to divide by."""
        out: dict[str, object] = {"consumed": self.consumed, "predicted": self.predicted,
                                  "already_predicted": self.already_predicted, "duplicates": self.duplicates,
                                  "dead_letters": self.dead_letters}
        if self.labelled:
            out["accuracy"] = self.correct / self.labelled
        if self.shadow_scored:
            out["shadow_agreement"] = self.shadow_agreed / self.shadow_scored
            if self.labelled:
                out["shadow_accuracy"] = self.shadow_correct / self.labelled
        if self.shadow_errors:
            out["shadow_errors"] = self.shadow_errors
        return out


def _total(name: str, doc: str) -> property:
    """A run's total of one ``SourceCounts`` field: summed over the sources when read (once per
    batch at most), never kept beside them, so the two cannot disagree."""
    return property(lambda report: sum(getattr(counts, name) for counts in report.by_source.values()), doc=doc)


@dataclass
class RunReport:
    """What one PredictTask run did; written as its JSON target."""

    batches: int = 0
    per_class: Counter = field(default_factory=Counter)
    per_source: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    model_version: str = ""
    #: The counts per source name, added to once per batch (never per message); the totals
    #: below are their sums.
    by_source: dict[str, SourceCounts] = field(default_factory=dict)
    #: Shadow scoring (a second model on every batch): its version; its figures are the
    #: ``shadow_*`` totals.
    shadow_model_version: str = ""
    #: Why the shadow model asked for could not be loaded (the run scored with the primary alone).
    shadow_unavailable: str = ""
    #: Threads that decoded batches of photos by the end of the run (0: none was decoded so).
    decode_threads: int = 0
    #: The ``predicted_at`` of the run's first and last rows (UTC): the review page finds a
    #: drifted run's rows by them.
    predicted_between: list = field(default_factory=list)
    #: The drift test's figures (``predict.drift.DriftMonitor.summary``), updated per window.
    drift: dict[str, object] | None = None

    consumed = _total("consumed", "Messages consumed.")
    predicted = _total("predicted", "Rows stored for the first time.")
    already_predicted = _total("already_predicted", "Messages whose id was already stored.")
    duplicates = _total("duplicates", "Messages whose id came again later in the same batch: one row "
                                      "is stored for the id.")
    dead_letters = _total("dead_letters", "Messages stored as dead letters.")
    labelled = _total("labelled", "Rows with a label.")
    correct = _total("correct", "Labelled rows the model got right.")
    shadow_scored = _total("shadow_scored", "Rows both models scored.")
    shadow_agreed = _total("shadow_agreed", "Rows on which the two agreed (the same class name).")
    shadow_correct = _total("shadow_correct", "Labelled rows the shadow model got right.")
    shadow_errors = _total("shadow_errors", "Batches the shadow model failed on, gave a non-finite output for "
                                            "some images of, or whose shadow rows the database refused; their "
                                            "primary rows were stored and acknowledged.")

    def source(self, name: str) -> SourceCounts:
        """The counts of source ``name``, created at zero."""
        counts = self.by_source.get(name)
        if counts is None:
            counts = self.by_source[name] = SourceCounts()
        return counts

    def record_batch(self, source: str, rows: Sequence[dict[str, object]], dead_letters: int, duplicates: int,
                     new: int, more_dead: int = 0) -> None:
        """A committed batch of ``source``: its prediction rows, ``new`` of them stored for the
        first time. ``more_dead``: messages its dead letters stand for beyond themselves (a Kafka
        batch that could not be read: one dead letter for every offset of it), counted as
        consumed and dead-lettered, so that every offset is counted once."""
        self.batches += 1
        if rows:  # a batch's rows share one stamp
            stamp = rows[0]["predicted_at"]
            known = self.predicted_between or [stamp, stamp]
            self.predicted_between = [min(known[0], stamp), max(known[1], stamp)]
        counts = self.source(source)
        counts.consumed += more_dead
        counts.predicted += new
        counts.already_predicted += len(rows) - new
        counts.duplicates += duplicates
        counts.dead_letters += dead_letters + more_dead
        # Counter.update counts an iterable in C; a loop of += per row cost a µs per image.
        self.per_class.update(map(itemgetter("predicted_name"), rows))
        self.per_source.update(map(itemgetter("source"), rows))
        labelled = [(row["true_label"], row["predicted_class"]) for row in rows if row["true_label"] is not None]
        counts.labelled += len(labelled)
        counts.correct += sum(truth == predicted for truth, predicted in labelled)

    def to_dict(self) -> dict[str, object]:
        """The report as its JSON target has it."""
        consumed, labelled = self.consumed, self.labelled
        return {
            "consumed": consumed,
            "predicted": self.predicted,
            "already_predicted": self.already_predicted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "batches": self.batches,
            "per_class": dict(sorted(self.per_class.items())),
            "per_source": dict(sorted(self.per_source.items())),
            "labelled": labelled,
            "accuracy": (self.correct / labelled) if labelled else None,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(consumed / self.seconds, 1) if self.seconds > 0 else None,
            "model_version": self.model_version,
            "predicted_between": [stamp.isoformat() for stamp in self.predicted_between],
            "by_source": {name: counts.to_dict() for name, counts in sorted(self.by_source.items())},
            **({"shadow": self._shadow_dict(labelled)} if self.shadow_model_version or self.shadow_unavailable
               else {}),
            **({"drift": self.drift} if self.drift is not None else {}),
        }

    def _shadow_dict(self, labelled: int) -> dict[str, object]:
        scored = self.shadow_scored
        return {
            "model_version": self.shadow_model_version,
            "scored": scored,
            "agreement": (self.shadow_agreed / scored) if scored else None,
            "accuracy": (self.shadow_correct / labelled) if labelled and scored else None,
            "errors": self.shadow_errors,
            **({"unavailable": self.shadow_unavailable} if self.shadow_unavailable else {}),
        }
