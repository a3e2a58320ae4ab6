"""How much the model learns of a new kind of image from a person's corrections.

    python benchmarks/learning_curve.py                          # the curve: 2 orders x 4 counts x 3 seeds
    python benchmarks/learning_curve.py --compare-only           # the loop test's 200, three ways (~2 min)
    python benchmarks/learning_curve.py --corrections 25,200 --seeds 1 --epochs 6 --json out.json

The images are the loop test's (tests/integration/test_review_loop.py): mnist-sample's test
split (chosen by content, so no model of the dataset trained on it), turned a quarter, drawn in
the order of ``numpy.random.default_rng(0).permutation``. Draws 200-299 are the 100 held apart:
never corrected, accuracy is measured on them. The rest are the corrections to choose from.

* **Compare** (the loop test's 200 corrections, draws 0-199): retraining as before
  (``reviewed_weight`` 1), with the weight, and fine-tuning the champion with the weight for
  ``--finetune-epochs`` at ``--finetune-rate``. Each row: held-apart accuracy, upright test
  accuracy, seconds, and seconds against the first row's (the same run, so the same load).
* **Curve**: after 25, 50, 100 and 200 corrections, chosen (a) in the review page's "review
  next" order (``vectorai.review.priority.review_order`` on the champion's predictions) and (b)
  at random, each retrained from scratch with the weight, over ``--seeds`` seeds (the training
  seed; for random, the draw too). Mean and spread of the held-apart accuracy.

The champion is the split's model trained for ``--base-epochs`` (8, as the test projects'). A
measurement, not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vectorai.training import TrainConfig  # noqa: E402 - after the path is set

#: The loop test's draw: its first 200 are corrected, the next 100 held apart.
DRAW_SEED, CORRECTED, HELD_APART = 0, 200, 100


def quarter_turned(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2)))


@dataclass
class Bench:
    """Everything every retraining shares: the split's images preprocessed, the quarter-turned
    pool and held-apart images, and the champion."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_pool: np.ndarray  # quarter-turned corrections to choose from: the loop test's 200 first
    y_pool: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    config: TrainConfig
    champion: Any = None

    def accuracy(self, model: Any) -> tuple[float, float]:
        """Held-apart (quarter-turned) and upright test accuracy."""
        held = np.argmax(model.predict(self.x_held, batch_size=256, verbose=0), axis=1)
        upright = np.argmax(model.predict(self.x_test, batch_size=256, verbose=0), axis=1)
        return float(np.mean(held == self.y_held)), float(np.mean(upright == self.y_test))

    def retrain(self, chosen: Sequence[int], config: TrainConfig,
                initial_weights: list | None = None) -> dict[str, float]:
        """Train on the split plus the pool's ``chosen`` corrections; its figures and seconds."""
        from vectorai.training import fit_model

        x = np.concatenate([self.x_train, self.x_pool[list(chosen)]])
        y = np.concatenate([self.y_train, self.y_pool[list(chosen)]])
        extra = np.arange(len(x)) >= len(self.x_train)
        start = time.perf_counter()
        model, _ = fit_model(x, y, config, 10, extra=extra, initial_weights=initial_weights, verbose=0)
        seconds = time.perf_counter() - start
        held, upright = self.accuracy(model)
        return {"held_apart_accuracy": held, "upright_accuracy": upright, "seconds": seconds}


def load_bench(config: TrainConfig, base_epochs: int, workdir: Path) -> Bench:
    """The split of mnist-sample (the test projects' settings), the pool and the champion."""
    from vectorai.prepare import load_splits, make_splits
    from vectorai.preprocess import preprocess_images
    from vectorai.training import fit_model

    make_splits("mnist-sample", workdir / "external", workdir / "split", val_fraction=0.15, test_fraction=0.15,
                seed=42, stream_size=200)
    splits = load_splits(workdir / "split")
    draw = np.random.default_rng(DRAW_SEED).permutation(len(splits.test))
    pool = np.concatenate([draw[:CORRECTED], draw[CORRECTED + HELD_APART:]])
    held = draw[CORRECTED:CORRECTED + HELD_APART]
    turned = quarter_turned(np.asarray(splits.test.images))

    def prep(images: np.ndarray) -> np.ndarray:
        return preprocess_images(images, config.spec)

    bench = Bench(prep(splits.train.images), splits.train.labels, prep(splits.test.images), splits.test.labels,
                  prep(turned[pool]), splits.test.labels[pool], prep(turned[held]), splits.test.labels[held],
                  config)
    bench.champion, _ = fit_model(bench.x_train, bench.y_train, replace(config, epochs=base_epochs), 10, verbose=0)
    return bench


def review_next(bench: Bench, seed: int) -> list[int]:
    """The pool in the review page's "review next" order on the champion's predictions (the
    same for every seed: the order has no randomness)."""
    from vectorai.review.priority import Candidate, review_order

    probabilities = bench.champion.predict(bench.x_pool, batch_size=256, verbose=0)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    candidates = [Candidate(margin=float(top - second), predicted_class=int(label))
                  for (second, top), label in zip(top_two, np.argmax(probabilities, axis=1))]
    return review_order(candidates)


def at_random(bench: Bench, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(len(bench.x_pool)).tolist()


#: How corrections are chosen: name -> (bench, seed) -> the pool's indices, first to correct first.
ORDERS: dict[str, Callable[[Bench, int], list[int]]] = {"review next": review_next, "random": at_random}


def compare(bench: Bench, finetune_epochs: int, finetune_rate: float, log: Callable[[str], None]) -> list[dict]:
    """The loop test's 200 corrections: as before (weight 1), weighted, and fine-tuned."""
    chosen = list(range(CORRECTED))
    cases = [("from scratch, weight 1 (before)", replace(bench.config, reviewed_weight=1), None),
             (f"from scratch, weight {bench.config.reviewed_weight}", bench.config, None),
             (f"fine-tune the champion, weight {bench.config.reviewed_weight}",
              replace(bench.config, epochs=finetune_epochs, learning_rate=finetune_rate),
              bench.champion.get_weights())]
    rows = []
    for name, config, initial in cases:
        row = {"case": name, "epochs": config.epochs, **bench.retrain(chosen, config, initial)}
        row["x_time"] = row["seconds"] / rows[0]["seconds"] if rows else 1.0
        log(json.dumps(row))
        rows.append(row)
    return rows


def curve(bench: Bench, counts: Sequence[int], seeds: int, orders: Sequence[str],
          log: Callable[[str], None]) -> list[dict]:
    """Held-apart accuracy after each count of corrections, each order, each seed."""
    rows = []
    for name in orders:
        for seed in range(seeds):
            order = ORDERS[name](bench, seed)
            for count in counts:
                row = {"order": name, "seed": seed, "corrections": count,
                       **bench.retrain(order[:count], replace(bench.config, seed=seed))}
                log(json.dumps(row))
                rows.append(row)
    return rows


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def tables(compared: list[dict], curved: list[dict]) -> str:
    """The two Markdown tables benchmarks/README.md shows."""
    lines = []
    if compared:
        lines += ["| retraining on the 200 | epochs | held-apart accuracy | upright test accuracy | seconds | x time |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['case']} | {r['epochs']} | {r['held_apart_accuracy']:.3f} | {r['upright_accuracy']:.4f} "
                  f"| {r['seconds']:.1f} | {r['x_time']:.2f} |" for r in compared]
        lines.append("")
    if curved:
        counts = sorted({r["corrections"] for r in curved})
        lines += ["| order | " + " | ".join(f"{c} corrections" for c in counts) + " | upright (all) |",
                  "| --- |" + " ---: |" * (len(counts) + 1)]
        for name in dict.fromkeys(r["order"] for r in curved):
            mine = [r for r in curved if r["order"] == name]
            cells = [_spread([r["held_apart_accuracy"] for r in mine if r["corrections"] == c]) for c in counts]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_spread([r['upright_accuracy'] for r in mine])} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corrections", default="25,50,100,200", help="counts of corrections on the curve")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per order and count")
    parser.add_argument("--orders", default=",".join(ORDERS), help=f"comma-separated, of: {', '.join(ORDERS)}")
    parser.add_argument("--epochs", type=int, default=12, help="retraining epochs (12, as in benchmarks/README.md's table)")
    parser.add_argument("--base-epochs", type=int, default=8, help="the champion's epochs (the test projects' 8)")
    parser.add_argument("--reviewed-weight", type=int, default=TrainConfig.reviewed_weight,
                        help="[TrainModel] reviewed_weight")
    parser.add_argument("--finetune-epochs", type=int, default=6, help="epochs of the fine-tuning case")
    parser.add_argument("--finetune-rate", type=float, default=1e-3, help="its starting learning rate")
    parser.add_argument("--compare-only", action="store_true", help="only the three ways to retrain on the 200")
    parser.add_argument("--no-compare", action="store_true", help="only the curve")
    parser.add_argument("--json", type=Path, help="also write every row to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.orders.split(",")) - set(ORDERS)
    if unknown:
        sys.exit(f"learning_curve: unknown order(s) {sorted(unknown)}; choose from {sorted(ORDERS)}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    config = TrainConfig(epochs=args.epochs, reviewed_weight=args.reviewed_weight)
    with tempfile.TemporaryDirectory(prefix="learning-curve-") as tmp:
        start = time.perf_counter()
        bench = load_bench(config, args.base_epochs, Path(tmp))
        log(f"champion ({args.base_epochs} epochs) in {time.perf_counter() - start:.1f} s: held-apart, upright "
            f"accuracy {bench.accuracy(bench.champion)}")
        compared = [] if args.no_compare else compare(bench, args.finetune_epochs, args.finetune_rate, log)
        counts = [int(c) for c in args.corrections.split(",")]
        curved = [] if args.compare_only else curve(bench, counts, args.seeds, args.orders.split(","), log)
    print(tables(compared, curved))
    if args.json:
        args.json.write_text(json.dumps({"compare": compared, "curve": curved, "args": {
            k: str(v) for k, v in vars(args).items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
