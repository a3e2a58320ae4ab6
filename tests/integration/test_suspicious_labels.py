""""Suspicious labels" finds changed labels: a stream of mnist-sample images the shared model did
not train on (its validation and test splits), 5 % of their labels changed at random."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vectorai import db
from vectorai.review.app import ReviewSettings, create_app
from vectorai.split import load_images

CHANGED_FRACTION, TOP = 0.05, 50


def test_most_of_the_top_suspicious_labels_are_the_changed_ones(project, tmp_path):
    [split_dir] = (project.data / "processed" / "mnist-sample").iterdir()
    held = [load_images(split_dir / f"{part}.npz") for part in ("val", "test")]
    images = np.concatenate([h.images for h in held])
    labels = np.concatenate([h.labels for h in held]).astype(np.int64)
    rng = np.random.default_rng(31)
    changed = rng.choice(len(labels), round(CHANGED_FRACTION * len(labels)), replace=False)
    given = labels.copy()
    given[changed] = (labels[changed] + rng.integers(1, 10, len(changed))) % 10  # another digit
    sample = tmp_path / "relabelled.npz"
    np.savez(sample, x=images, y=given)
    project.luigi("PredictTask", "--sample-file", str(sample), "--stream-timeout-ms", "500")

    [sent] = [m for m in map(json.loads, map(Path.read_text, (project.data / "stream" / "manifests").glob("*.json")))
              if m["sample"] == str(sample)]
    changed_ids = {sent["ids"][i] for i in changed}
    database = db.connect(db.sqlite_url(project.data / "predictions.sqlite"))
    try:
        client = create_app(database, ReviewSettings(reviewer="test")).test_client()
        html = client.get(f"/predictions?order=suspicious&limit={TOP}").get_data(as_text=True)
    finally:
        database.close()
    top = re.findall(r'data-id="([^"]*)"', html)
    assert len(images) >= 1000 and len(changed) >= TOP and len(top) == TOP
    found = len(set(top) & changed_ids)
    print(f"suspicious labels: {found} of the top {TOP} are among the {len(changed)} changed labels")
    assert found >= 40
