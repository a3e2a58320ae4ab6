"""Core scaling: the photos case once per core count, each in a fresh process pinned with taskset."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from benchmarks.workers import REPO, SCRIPT

#: The photos figures each row of the table keeps.
ROW_KEYS = ("images_per_second", "ceiling_beside_images_per_second", "ratio_to_ceiling_beside",
            "median_ratio_to_ceiling_beside", "cpu_seconds_per_1000_images", "peak_rss_mib", "decode_threads")


def run_scaling(args: argparse.Namespace, argv: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The photos case once per core count in ``--cores``, each in a fresh process pinned with
    ``taskset`` to the first N cores: how images/s grows against the raw ceiling."""
    rows = []
    if shutil.which("taskset") is None:
        raise SystemExit("--cores needs taskset (util-linux) to pin each run to its cores")
    passed = drop_values(argv, ("--cores", "--json", "--cases", "--draft-check"))
    for cores in [int(c) for c in args.cores.split(",") if c.strip()]:
        if cores > (os.cpu_count() or 1):
            log(f"scaling: skipping {cores} cores, this machine has {os.cpu_count()}")
            continue
        photos = _photos_on(cores, passed, log)
        rows.append({"cores": cores, **{key: photos[key] for key in ROW_KEYS},
                     "decode_cpu_ms_per_photo": photos["decode_cpu_ms_per_photo"]["jpeg_draft"]})
        log(f"scaling: {cores} cores: {photos['images_per_second']:,.1f} images/s, ceiling "
            f"{photos['ceiling_beside_images_per_second']:,.1f}")
    return {"images": args.photo_images, "batch_size": args.batch_size, "rows": rows}


def _photos_on(cores: int, passed: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The photos case's summary from a fresh run of the script on the first ``cores`` cores."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["taskset", "-c", f"0-{cores - 1}", sys.executable, str(SCRIPT), *passed,
                   "--cases", "photos", "--draft-check", "0", "--json", out.name, "--quiet"]
        log(f"scaling: {' '.join(command[:4])} ... on {cores} cores")
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"{cores} cores failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())["photos"]


def drop_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (``--x v`` or ``--x=v``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept
