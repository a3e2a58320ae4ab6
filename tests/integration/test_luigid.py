"""The chain against a real luigid central scheduler, as the README describes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from services.common import free_port, port_open
from tests.conftest import new_project

pytestmark = pytest.mark.luigid


@pytest.fixture
def luigid(tmp_path):
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


def test_chain_through_luigid_shows_every_task_and_dependency(tmp_path, luigid):
    # A fresh project (a quick 1-epoch model), so the worker schedules every task of the chain.
    project = new_project(tmp_path / "fresh")
    project.luigi("PredictTask", "--epochs", "1", "--stream-size", "20",
                  "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid), local=False)
    done = api(luigid, "task_list", {"status": "DONE", "upstream_status": "", "search": ""})
    families = {task["name"]: task_id for task_id, task in done.items()}
    assert set(families) == {"SplitData", "TrainModel", "ExportOnnx", "PromoteModel", "StreamData", "PredictTask"}

    graph = api(luigid, "dep_graph", {"task_id": families["PredictTask"], "include_done": True})
    deps = {graph[task_id]["name"]: {graph[d]["name"] for d in graph[task_id]["deps"]} for task_id in graph}
    assert deps == {
        "PredictTask": {"PromoteModel", "StreamData"},
        "StreamData": {"SplitData"},  # streaming needs the images, not a model (a pinned model moves nothing)
        "PromoteModel": {"ExportOnnx"},
        "ExportOnnx": {"TrainModel"},
        "TrainModel": {"SplitData"},
        "SplitData": set(),
    }
    # The visualiser page a user opens in a browser is served too.
    with urllib.request.urlopen(f"http://127.0.0.1:{luigid}/static/visualiser/index.html", timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
