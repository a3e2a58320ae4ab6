"""Shadow scoring: a second model on every batch, best effort from its loading to its rows.

A shadow model that cannot be loaded, fails on a batch, or gives rows the database refuses is
logged and counted (``RunReport``'s ``shadow_*`` figures and the metrics file), and the run goes
on with the primary model's rows alone: a challenger must never cost the rows of the model that
is in production.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from vectorai.inference import OnnxClassifier
from vectorai.predict.report import RunReport
from vectorai.predict.stages import (ClassifiedBatch, DecodedBatch, describe_batch, finite_rows, one_line,
                                     own_shadow_input)

log = logging.getLogger("vectorai.predict")  # as the loop's other lines


def load_shadow(load: Callable[[], OnnxClassifier], uri: str) -> tuple[OnnxClassifier | None, str]:
    """The shadow model ``load()`` gives, or None and why it could not be loaded (an alias that
    names no version, a digest that does not match, a file onnxruntime refuses...), logged."""
    try:
        return load(), ""
    except Exception as err:  # noqa: BLE001 - best effort: the run scores with the primary model alone
        text = one_line(err)
        reason = text if uri in text else f"{uri}: {text}"  # the registry's errors name it already
        log.warning("the shadow model %s cannot be loaded; scoring with the primary model alone (%s: %s)",
                    uri, type(err).__name__, text)
        return None, reason


def shadow_rows(batch: ClassifiedBatch, probabilities: np.ndarray, shadow: OnnxClassifier) -> list[dict[str, object]]:
    """The shadow model's rows for the messages ``batch`` has rows for (the same order), from its
    output for every decoded message; a message whose shadow output is not finite has none."""
    if not batch.rows:
        return []
    if batch.model_rows is not None:  # the primary's output left some messages out
        probabilities = probabilities[batch.model_rows]
    finite = finite_rows(probabilities).tolist()
    classes = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(classes)), classes]
    names, version = shadow.class_names, shadow.info.version
    return [{
        "source": row["source"], "message_id": row["message_id"], "model_version": version,
        "predicted_class": cls, "predicted_name": names[cls], "confidence": confidence,
        "true_label": row["true_label"], "predicted_at": row["predicted_at"],
    } for row, cls, confidence, ok in zip(batch.rows, classes.tolist(), confidences.tolist(), finite) if ok]


class ShadowScorer:
    """A second model on every batch, after the primary, adding its figures to ``report`` once
    the batch is written."""

    def __init__(self, classifier: OnnxClassifier, shadow: OnnxClassifier, report: RunReport) -> None:
        self.shadow = shadow
        self._own_input = own_shadow_input(classifier, shadow)
        self._report = report

    def score(self, decoded: DecodedBatch, batch: ClassifiedBatch) -> None:
        """Give ``batch`` (labelled from ``decoded``) the shadow's rows; a failure is counted."""
        if not batch.rows:
            return
        rows = self._rows(decoded, batch)
        if rows is None:
            self._report.source(batch.source.name).shadow_errors += 1
            return
        batch.shadow_rows = rows
        batch.shadow_dropped = len(batch.rows) - len(rows)
        theirs = {row["message_id"]: row["predicted_class"] for row in rows}
        for row in batch.rows:  # by class index, as the page's "shadow disagrees" filter compares
            if theirs.get(row["message_id"], row["predicted_class"]) != row["predicted_class"]:
                row["shadow_disagrees"] = 1
        if batch.shadow_dropped:
            log.warning("shadow model %s gave a non-finite output for %d images of a %s; no shadow rows for them",
                        self.shadow.info.version, batch.shadow_dropped, describe_batch(batch.source, batch.messages))
            self._report.source(batch.source.name).shadow_errors += 1

    def written(self, batch: ClassifiedBatch, rejected: str | None) -> None:
        """Count ``batch``'s shadow rows once its transaction is committed; ``rejected``: why the
        database refused them (rolled back to their own savepoint, the primary's rows stored)."""
        rows = batch.shadow_rows
        if not rows:
            return
        counts = self._report.source(batch.source.name)
        if rejected is not None:
            log.warning("the database refused shadow model %s's rows for a %s; the batch is stored without "
                        "them: %s", self.shadow.info.version, describe_batch(batch.source, batch.messages), rejected)
            counts.shadow_errors += 0 if batch.shadow_dropped else 1  # one error per batch at most
            return
        # By class name: the two models may list their classes in another order. By message id:
        # the shadow may have left some of the primary's rows out.
        primary = batch.rows
        if batch.shadow_dropped:
            scored = {theirs["message_id"] for theirs in rows}
            primary = [row for row in batch.rows if row["message_id"] in scored]
        counts.shadow_scored += len(rows)
        counts.shadow_agreed += sum(row["predicted_name"] == theirs["predicted_name"]
                                    for row, theirs in zip(primary, rows))
        counts.shadow_correct += sum(theirs["predicted_class"] == theirs["true_label"] for theirs in rows
                                     if theirs["true_label"] is not None)

    def _rows(self, decoded: DecodedBatch, batch: ClassifiedBatch) -> list[dict[str, object]] | None:
        """The shadow's rows; None when it failed (logged)."""
        pixels = decoded.shadow_pixels if self._own_input else decoded.pixels
        if pixels is None:  # its preprocessing failed (logged in stages._shadow_input)
            return None
        try:
            return shadow_rows(batch, self.shadow.predict_proba(pixels), self.shadow)
        except Exception as err:  # noqa: BLE001 - whatever the shadow does, the primary's batch is stored
            log.warning("shadow model %s failed on a %s; the batch is stored without its rows: %s: %s",
                        self.shadow.info.version, describe_batch(batch.source, batch.messages),
                        type(err).__name__, one_line(err))
            return None
