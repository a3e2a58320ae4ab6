"""``vectorai-results``: piped into a reader that stops early (``| head``) it ends quietly; it refuses
a password on its command line."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vectorai import db

REPO = Path(__file__).resolve().parents[2]
ROWS = 2000  # ~190 KB of listing: more than a pipe holds, so the writer is still writing when head exits


def _results_database(path: Path) -> str:
    url = db.sqlite_url(path)
    database = db.connect(url)
    now = dt.datetime(2026, 11, 30, 10, 0, 0)
    rows = [{
        "source": "local", "message_id": f"message-{i:05d}", "position": f"t@{i}", "image": b"\x00",
        "content_type": "image/png", "predicted_class": i % 10, "predicted_name": str(i % 10),
        "confidence": 0.9, "true_label": i % 10, "model_version": "v1", "produced_at": now,
        "predicted_at": now + dt.timedelta(seconds=i),
    } for i in range(ROWS)]
    assert db.write_results(database, rows, []) == ROWS
    database.close()
    return url


def test_piped_into_head_it_ends_without_a_traceback(tmp_path):
    url = _results_database(tmp_path / "results.sqlite")
    command = (f"{shlex.quote(sys.executable)} -m tasks.cli --database-url {shlex.quote(url)} "
               f"--limit {ROWS} | head -1")
    # pipefail: the status is the listing's own, not head's.
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert proc.stdout.startswith("database: sqlite:///"), proc.stdout
    assert proc.stdout.count("\n") == 1
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_a_reader_gone_before_the_first_line_is_no_error(tmp_path):
    url = _results_database(tmp_path / "results.sqlite")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: the first write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "tasks.cli", "--database-url", url, "--json"],
                              cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)

    assert proc.stderr == ""
    assert proc.returncode == 0


@pytest.mark.parametrize("url", [
    "postgresql://app:hunter2@127.0.0.1:1/predictions",
    "postgresql://app@127.0.0.1:1/predictions?password=hunter2",
    "postgresql://app:hun%40ter2@127.0.0.1:1/predictions",
])
def test_a_password_on_the_command_line_is_refused_in_one_line(tmp_path, url):
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "--database-url", url], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "--database-url must not contain a password" in line and "$DATABASE_URL" in line and "~/.pgpass" in line
    assert "hunter2" not in line and "hun%40ter2" not in line and "127.0.0.1" not in line


def test_the_same_url_from_database_url_is_used(tmp_path):
    """The refusal is of the command line only: $DATABASE_URL may hold a password (here an
    SQLite URL stands in: what matters is that the environment's URL is the one read)."""
    url = _results_database(tmp_path / "results.sqlite")
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "--limit", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": url})
    assert proc.returncode == 0 and proc.stdout.startswith(f"database: {url}"), proc.stderr


HOSTILE_ID = "msg\x1b]0;owned\x07\x1b[2J\r\u202e"


def test_the_listing_shows_control_characters_in_ids_as_text(tmp_path):
    url = db.sqlite_url(tmp_path / "results.sqlite")
    database = db.connect(url)
    now = dt.datetime(2026, 11, 30, 10, 0, 0)
    row = {"source": "local", "message_id": HOSTILE_ID, "position": "t@0", "image": b"\x00",
           "content_type": "image/png", "predicted_class": 1, "predicted_name": "one\x1b[31m",
           "confidence": 0.9, "true_label": 1, "model_version": "v1", "produced_at": now, "predicted_at": now}
    assert db.write_results(database, [row], []) == 1
    database.close()
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "--database-url", url], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert not any(ch in proc.stdout for ch in "\x1b\x07\r\u202e")
    assert "msg\\x1b]0;owned\\x07\\x1b[2J\\x0d\\u202e"[:28] in proc.stdout
    assert "one=1" not in proc.stdout and "one\\x1b[31m=1" in proc.stdout


def test_an_error_line_shows_control_characters_as_text(tmp_path):
    (tmp_path / "a file \x1b]0;owned\x07").write_text("not a folder")
    url = db.sqlite_url(tmp_path / "a file \x1b]0;owned\x07" / "results.sqlite")
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "--database-url", url], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    [line] = proc.stderr.splitlines()
    assert proc.returncode == 1 and line.startswith("vectorai-results: database ")
    assert "\x1b" not in line and "\x07" not in line and "a file \\x1b]0;owned\\x07" in line
