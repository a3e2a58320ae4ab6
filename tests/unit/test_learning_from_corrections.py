"""Learning a new kind of image from 200 corrections, without the review loop around it: the loop
test's 200 quarter-turned digits added to mnist-sample's training split, retrained directly (two
minutes on 2 cores, against the loop test's five or more). The images: mnist-sample's test split,
turned a quarter (no model of the dataset trained on them), drawn as the loop test draws them;
100 others held apart."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest

from benchmarks.learning_curve import CORRECTED, load_bench
from vectorai.training import TrainConfig

# Trains a model and retrains it four times (two minutes on 2 cores): the targets are the loop test's (issue 31).
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(900)]

HELD_APART_TARGET, UPRIGHT_TARGET = 0.90, 0.975
SEEDS = (42, 1, 2)


def test_two_hundred_weighted_corrections_teach_quarter_turned_digits_and_forget_nothing(tmp_path):
    config = TrainConfig(epochs=12)  # the loop test's retraining; its default reviewed_weight
    bench = load_bench(config, base_epochs=1, workdir=tmp_path)  # the champion is not used here
    # One retraining's upright accuracy moves by +-0.004 with the seed (3 of the split's 768
    # test digits): the targets hold for the mean of three.
    runs = [bench.retrain(range(CORRECTED), replace(config, seed=seed)) for seed in SEEDS]
    held, upright = (statistics.fmean(run[key] for run in runs) for key in ("held_apart_accuracy", "upright_accuracy"))
    assert held >= HELD_APART_TARGET and upright >= UPRIGHT_TARGET, runs
    # Counted once, as before, the 200 are too few among ~3,500 upright digits.
    once = bench.retrain(range(CORRECTED), replace(config, reviewed_weight=1))
    assert once["held_apart_accuracy"] < HELD_APART_TARGET, once
