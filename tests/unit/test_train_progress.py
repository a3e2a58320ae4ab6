"""TrainModel's live state comes from a Keras callback in ``train_model``: checked on a real
(tiny) training run recorded in a throwaway MLflow store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vectorai.datasets import LabelledImages
from vectorai.tracking import default_tracking_uri
from vectorai.training import TrainConfig, TrainProgress, train_model

pytestmark = pytest.mark.slow


def _images(count: int, seed: int) -> LabelledImages:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = (rng.random((count, 8, 8)) * 100 + labels[:, None, None] * 150).astype(np.uint8)
    return LabelledImages(images, labels, ["dark", "light"])


def test_progress_names_the_run_first_then_each_epoch_with_its_metrics(tmp_path):
    seen: list[TrainProgress] = []
    config = TrainConfig(epochs=2, batch_size=16, image_height=8, image_width=8)
    train_model(_images(64, 1), _images(16, 2), _images(16, 3), config, tmp_path / "out",
                tracking_uri=default_tracking_uri(tmp_path / "mlflow"), experiment="progress",
                artifact_dir=tmp_path / "artifacts", run_name="tiny", progress=seen.append)

    assert [(p.epoch, p.epochs, p.percent) for p in seen] == [(0, 2, 0.0), (1, 2, 50.0), (2, 2, 100.0)]
    assert len({(p.run_id, p.experiment_id) for p in seen}) == 1
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (summary["mlflow_run_id"], summary["mlflow_experiment_id"]) == (seen[0].run_id, seen[0].experiment_id)
    assert set(seen[-1].metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert seen[-1].metrics["val_accuracy"] == pytest.approx(summary["history"]["val_accuracy"][-1])
    line = seen[1].describe()
    assert line.startswith("epoch 1/2: loss ") and ", val_accuracy " in line
    assert seen[0].describe() == "epoch 0/2: training"
