"""The whole review loop: a stream the model was not trained for, corrections made in the page
through a real browser, a retrain with them, promotion on images held apart, and the next run
scoring with the new champion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from vectorai.split import load_images

# The timeout covers training the shared model too, when this test is the first to need it.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.system, pytest.mark.timeout(2400)]

REVIEWED, HELD_APART, NEXT_RUN = 200, 100, 40
#: What 200 corrections must achieve (issue 31): on the held-apart quarter-turned digits, on the
#: upright test split (nothing forgotten), and the retraining's work against retraining on them
#: unweighted, as before (benchmarks/README.md times both in one run).
HELD_APART_TARGET, UPRIGHT_TARGET, WORK_TARGET = 0.90, 0.975, 2.0
#: The seeded draw of the test split the digits are taken from (benchmarks/learning_curve.py's):
#: the split is in class order, so its first 300 would be 0s, 1s and 2s corrected and 2s and 3s
#: held apart, a class never corrected.
DRAW_SEED = 0


def _rotated(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))


def _report(project, run_at: str) -> dict:
    reports = [json.loads(p.read_text()) for p in (project.data / "reports").glob("predict-*.json")]
    [report] = [r for r in reports if r["run_at"] == run_at]
    return report


def _serve(project) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).parent / "vectorai-results"
    proc = subprocess.Popen([str(exe), "serve", "--port", "0", "--reviewer", "loop-test"], cwd=project.root,
                            env=project.command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if "serving http://" not in line:
        proc.kill()
        raise AssertionError(f"vectorai-results serve did not start: {line}{proc.stdout.read()}")
    return proc, line.split("serving ")[1].split("/ ")[0]


def test_corrections_in_the_page_retrain_and_the_next_run_uses_them(project, page, tmp_path):
    [split_dir] = (project.data / "processed" / "mnist-sample").iterdir()
    test = load_images(split_dir / "test.npz")
    assert len(test) >= REVIEWED + HELD_APART + NEXT_RUN
    # Digits turned a quarter: a kind of image the model never saw. The split's test images, so
    # none of them is in the training split either; every class among the corrected and the held apart.
    draw = np.random.default_rng(DRAW_SEED).permutation(len(test))
    stream = _rotated(test.images[draw[:REVIEWED + HELD_APART]])
    labels = test.labels[draw[:REVIEWED + HELD_APART]]
    assert len(set(labels[:REVIEWED].tolist())) == len(set(labels[REVIEWED:].tolist())) == 10
    sample, eval_file, next_sample = tmp_path / "rotated.npz", tmp_path / "rotated-eval.npz", tmp_path / "rotated-next.npz"
    np.savez(sample, x=stream, y=labels)
    np.savez(eval_file, x=stream[REVIEWED:], y=labels[REVIEWED:])  # held apart: never reviewed
    np.savez(next_sample, x=_rotated(test.images[draw[-NEXT_RUN:]]), y=test.labels[draw[-NEXT_RUN:]])
    common = ["--eval-file", str(eval_file), "--stream-timeout-ms", "500"]

    # 1. Stream the 300; the trained model makes the first champion and scores them badly.
    project.luigi("PredictTask", "--sample-file", str(sample), "--run-at", "before", *common)
    before = _report(project, "before")
    assert before["predicted"] == REVIEWED + HELD_APART and before["accuracy"] < 0.5, before

    # 2. Correct 200 of them in the page, with the keyboard, in a real browser, in the order
    # "review next" gives (the 100 held apart are passed over wherever they come).
    # StreamData's manifest lists the ids it sent, in the sample's order.
    [sent] = [m for m in map(json.loads, map(Path.read_text, (project.data / "stream" / "manifests").glob("*.json")))
              if m["sample"] == str(sample)]
    truth = {key: int(labels[i]) for i, key in enumerate(sent["ids"][:REVIEWED])}
    server, base = _serve(project)
    try:
        page.goto(f"{base}/predictions?limit=300")
        page.select_option("select#order", "next")
        page.click("form#filters button[type=submit]")
        page.wait_for_load_state("networkidle")
        cards = page.locator(".card")
        assert cards.count() == REVIEWED + HELD_APART == page.locator(".card .margin").count()
        for i in range(cards.count()):
            card = cards.nth(i)
            key = card.get_attribute("data-id")
            if key not in truth:
                continue
            card.focus()
            with page.expect_response(lambda r: r.url.endswith("/review") and r.status == 200):
                page.keyboard.press(str(truth[key]))
            if i + 1 < cards.count():  # the page moves on after the response: let it, before focusing another
                expect(cards.nth(i + 1)).to_be_focused()
        page.screenshot(path=str(page.screenshots / "reviewed.png"))
        page.goto(f"{base}/predictions?unreviewed=1&limit=300")
        assert page.locator(".card").count() == HELD_APART
    finally:
        server.terminate()
        server.wait(10)

    # 3.-5. Retrain with the reviews at the default 20 epochs, as a user would (test projects train
    # 8; the targets are for the default recipe, and 12 epochs left the upright split at 0.971),
    # promote on the held-apart 100, and stream new images to the next run.
    project.luigi("PredictTask", "--sample-file", str(next_sample), "--run-at", "after", "--extra-train",
                  "reviewed", "--epochs", "20", *common, timeout=1500)
    [export] = (project.data / "reviewed").glob("reviewed-200-*.npz")
    exported = load_images(export)
    assert sorted(exported.labels.tolist()) == sorted(truth.values())
    [decision_file] = project.root.glob("models/*-reviewed-200-*/promotion/*.json")
    decision = json.loads(decision_file.read_text())
    assert decision["outcome"] == "promoted", decision
    assert decision["images"] == HELD_APART
    assert decision["candidate"]["accuracy"] >= HELD_APART_TARGET, decision
    trained = json.loads((decision_file.parent.parent / "keras" / "metrics.json").read_text())
    assert trained["metrics"]["test_accuracy"] >= UPRIGHT_TARGET, trained["metrics"]  # the upright test split
    # Training time grows with the images an epoch goes through; unweighted, it went through the
    # split's training images and the 200 once.
    assert trained["extra_train_images"] == REVIEWED
    assert trained["images_per_epoch"] <= WORK_TARGET * trained["train_size"], trained
    after = _report(project, "after")
    new_version = f"{decision['registered_model']}/{decision['candidate']['version']}"
    assert after["model_version"] == new_version != before["model_version"]
    assert after["predicted"] == NEXT_RUN
    print(f"\nheld-apart accuracy: {decision['champion']['accuracy']:.3f} before, "
          f"{decision['candidate']['accuracy']:.3f} after {REVIEWED} reviews; upright test accuracy "
          f"{trained['metrics']['test_accuracy']:.4f}; {trained['images_per_epoch']} images per epoch "
          f"against {trained['train_size']} unweighted")
