"""What a clone holds: no generated file is tracked, so a fresh clone has no work already done."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    """``git`` in the repository; skipped outside a git checkout, except on CI, which runs in a clone."""
    try:
        top = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        top = None
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO:
        reason = (f"{REPO} is not the top of a git checkout "
                  f"({'git is not installed' if top is None else (top.stderr.strip() or top.stdout.strip())})")
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def test_data_and_models_hold_only_placeholders():
    tracked = _git("ls-files", "data", "models").splitlines()

    assert tracked, "data/ and models/ must keep their .gitkeep placeholders"
    assert [path for path in tracked if Path(path).name != ".gitkeep"] == []


def test_no_tracked_file_is_one_gitignore_says_a_run_generates():
    # A file committed before its pattern was added stays tracked (a run report did, and made
    # PredictTask look complete in every new clone).
    assert _git("ls-files", "--cached", "--ignored", "--exclude-standard") == ""
