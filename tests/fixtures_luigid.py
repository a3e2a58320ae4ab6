"""Pytest plugin: a real ``luigid`` on a free loopback port for one test (``luigid``), and ``api``
to read its state as the visualiser does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from services.common import free_port, port_open


@pytest.fixture
def luigid(tmp_path) -> Iterator[int]:
    """The port of a luigid with its state and logs in tmp_path."""
    port = free_port()
    luigid_bin = Path(sys.executable).parent / "luigid"
    log = open(tmp_path / "luigid.log", "wb")
    proc = subprocess.Popen([str(luigid_bin), "--port", str(port), "--address", "127.0.0.1",
                             "--state-path", str(tmp_path / "luigid.state"), "--logdir", str(tmp_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"luigid did not start: {(tmp_path / 'luigid.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield port
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def api(port: int, method: str, payload: dict) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(payload)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{method}?{query}", timeout=10) as response:
        return json.loads(response.read())["response"]
