"""How fast the results page's grid answers on a large table (PostgreSQL).

    python benchmarks/review_page.py                    # 1,000,000 prediction rows
    python benchmarks/review_page.py --rows 100000 --json out.json

It fills a fresh database with ``--rows`` predictions (the pipeline's own writer, COPY in batches;
each row a real 28x28 PNG, a tenth of them with a shadow prediction, one in a hundred reviewed),
serves the page on a loopback port and times, over HTTP, each request a person makes: the grid's
first page, a later page (keyset: ``after`` half-way down the table), filtered first pages, the
"review next" and "suspicious labels" orders (a run report flags the last tenth of the rows as
drifted), a thumbnail and a correction. Each figure is the median of ``--repeat`` requests after one that
warms the cache of the filters' options (its time is reported as ``cold``). PostgreSQL comes from
DATABASE_URL (postgresql://...) or is started here in a temp dir and removed at the end. A
measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_MS = 300.0


def fill(database, rows: int, batch: int = 20_000, log=print) -> None:
    """``rows`` predictions through ``vectorai.db.write_results``, with shadow rows and reviews."""
    from vectorai import db
    from vectorai.messages import encode_image

    rng = np.random.default_rng(0)
    images = [encode_image(rng.integers(0, 255, (28, 28), dtype=np.uint8), "x").payload for _ in range(64)]
    start = dt.datetime(2026, 1, 1)
    began = time.perf_counter()
    for first in range(0, rows, batch):
        predictions, shadow = [], []
        for i in range(first, min(rows, first + batch)):
            predicted = i % 10
            truth = (predicted if i % 7 else (predicted + 1) % 10) if i % 2 == 0 else None
            row = {"source": "kafka", "message_id": f"bench-{i:08d}", "position": f"vectorai-images/0@{i}",
                   "image": images[i % 64], "content_type": "image/png", "predicted_class": predicted,
                   "predicted_name": str(predicted), "confidence": float((i * 7919 % 1000) / 1000),
                   "true_label": truth,
                   "model_version": f"vectorai-bench/{1 + i * 3 // rows}", "produced_at": None,
                   "predicted_at": start + dt.timedelta(seconds=i), "margin": float((i * 104729 % 100_000) / 100_000),
                   "label_probability": None if truth is None else
                   float((i * 6151 % 1000) / 1000) * (0.01 if truth != predicted else 1.0)}
            predictions.append(row)
            if i % 10 == 0:
                shadow.append({"source": "kafka", "message_id": row["message_id"], "model_version": "vectorai-bench/9",
                               "predicted_class": (predicted + (i % 3 == 0)) % 10, "predicted_name": "s",
                               "confidence": 0.5, "true_label": row["true_label"], "predicted_at": row["predicted_at"]})
        db.write_results(database, predictions, [], shadow)
        if (first // batch) % 10 == 0:
            log(f"  {first + len(predictions):,} rows ({time.perf_counter() - began:.0f} s)")
    reviewed = [{"source": "kafka", "message_id": f"bench-{i:08d}", "label": i % 10, "reviewed_at": start,
                 "reviewer": "bench"} for i in range(0, rows, 100)]
    for chunk in range(0, len(reviewed), 5000):
        (db.Review.insert_many(reviewed[chunk:chunk + 5000])
         .on_conflict(action="NOTHING", conflict_target=db.unique_key(db.Review)).execute())
    database.execute_sql("ANALYZE")


def drifted_report(folder: Path, rows: int) -> None:
    """A run report flagging drift over the last tenth of the rows, as the drift check writes it."""
    start = dt.datetime(2026, 1, 1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predict-kafka-drifted.json").write_text(json.dumps({
        "model_version": f"vectorai-bench/{1 + (rows - 1) * 3 // rows}",
        "drift": {"score": 0.9, "p_value": 1e-6, "drifted": True},
        "predicted_between": [(start + dt.timedelta(seconds=rows * 9 // 10)).isoformat(),
                              (start + dt.timedelta(seconds=rows - 1)).isoformat()]}))


def measure(base: str, rows: int, repeat: int) -> list[dict]:
    import requests

    session = requests.Session()
    first = session.get(f"{base}/predictions")
    csrf = re.search(r'data-csrf="([^"]+)"', first.text).group(1)

    def timed(name: str, method: str, path: str, **kwargs) -> dict:
        times = []
        for _ in range(repeat + 1):
            began = time.perf_counter()
            response = session.request(method, f"{base}{path}", **kwargs)
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
        return {"request": name, "path": path, "cold_ms": round(times[0], 1),
                "median_ms": round(statistics.median(times[1:]), 1), "max_ms": round(max(times[1:]), 1),
                "cards": response.text.count('class="card') if "predictions" in path else None}

    return [
        timed("grid, first page", "GET", "/predictions"),
        timed("grid, a later page (keyset, half-way)", "GET", f"/predictions?after={rows // 2}"),
        timed("grid, page 2 by its link", "GET", "/predictions?after=" + re.search(
            r'after=(\d+)" id="next-page"', first.text).group(1)),
        timed("grid, one class", "GET", "/predictions?cls=3"),
        timed("grid, confidence below 0.1", "GET", "/predictions?below=0.1"),
        timed("grid, not reviewed yet", "GET", "/predictions?unreviewed=1"),
        timed("grid, labelled and wrong", "GET", "/predictions?wrong=1"),
        timed("grid, shadow disagrees", "GET", "/predictions?shadow=1"),
        timed("grid, one model version, later page", "GET", f"/predictions?version=vectorai-bench/2&after={rows // 2}"),
        timed("review next, first page", "GET", "/predictions?order=next"),
        timed("review next, page 5", "GET", "/predictions?order=next&page=4"),
        timed("review next, one class", "GET", "/predictions?order=next&cls=3"),
        timed("suspicious labels, first page", "GET", "/predictions?order=suspicious"),
        timed("suspicious labels, page 5", "GET", "/predictions?order=suspicious&page=4"),
        timed("thumbnail", "GET", f"/image/prediction/{rows // 3}.png"),
        timed("correction (POST)", "POST", "/review", data={"source": "kafka", "message_id": "bench-00000042",
                                                             "label": "4", "csrf": csrf},
              headers={"X-Requested-With": "fetch"}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="prediction rows to fill the table with")
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per case (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    from vectorai import db
    from vectorai.review.app import ReviewSettings
    from vectorai.review.server import ReviewServer

    url, cluster = os.environ.get("DATABASE_URL", ""), None
    if not url.startswith(("postgresql://", "postgres://")):
        from services.private import start_private

        cluster = start_private("postgres", prefix="vectorai-bench-review-")
        url = cluster.address
    try:
        database = db.connect(url)
        if db.Prediction.select().count():
            raise SystemExit("the database already has predictions; point DATABASE_URL at an empty one")
        print(f"filling {args.rows:,} prediction rows ...", flush=True)
        began = time.perf_counter()
        fill(database, args.rows)
        filled_s = time.perf_counter() - began
        with tempfile.TemporaryDirectory(prefix="vectorai-bench-reports-") as reports:
            drifted_report(Path(reports), args.rows)
            server = ReviewServer(database, ReviewSettings(reviewer="bench", reports_dir=Path(reports)), "127.0.0.1", 0)
            threading.Thread(target=server.serve, daemon=True).start()
            try:
                results = measure(server.url, args.rows, args.repeat)
            finally:
                server.stop()
        database.close()
    finally:
        if cluster is not None:
            cluster.remove()

    print(f"\n{args.rows:,} rows in PostgreSQL (filled in {filled_s:.0f} s); median of {args.repeat} requests "
          f"over HTTP, target {TARGET_MS:.0f} ms for the grid's pages\n")
    print(f"{'request':40} {'median ms':>10} {'max ms':>8} {'cold ms':>8} {'cards':>6}")
    for r in results:
        print(f"{r['request']:40} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} {r['cold_ms']:>8.1f} "
              f"{r['cards'] if r['cards'] is not None else '':>6}")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "target_ms": TARGET_MS, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
