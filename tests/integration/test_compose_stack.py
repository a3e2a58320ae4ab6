"""docker-compose.yml brought up for real (podman and podman-compose), the whole chain run in the
``worker`` container through the ``luigid`` container, and the stack removed again.

The images are built here from a Debian base (tests/compose_stack.py says why and how); the
compose file is the project's own, with tests/compose/docker-compose.test.yml naming the
stand-in images. Pub/Sub, node-exporter and Prometheus are not part of this test.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from services.common import free_port
from tests import compose_stack
from tests.conftest import IN_CI

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.system]

CHAIN = ["SplitData", "TrainModel", "ExportOnnx", "PromoteModel", "StreamData", "PredictTask"]
STARTED = ["kafka", "postgres", "mlflow", "luigid"]  # what the chain needs; the worker is run
EPOCHS = 2  # the smallest training that still classifies well enough to check its answers


def get_json(port: int, path: str, body: dict | None = None, **query: str) -> dict:
    """GET with ``query``, or POST ``body`` as JSON, to a published port; the answer's JSON."""
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def engine():
    try:
        compose_stack.check_engine()
    except compose_stack.EngineError as err:
        if IN_CI:
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


@pytest.mark.timeout(2400)
def test_compose_stack_runs_the_whole_chain(engine, tmp_path):
    timings: dict[str, float] = {}
    images_before = compose_stack.top_level_images()
    stable_before = compose_stack.stable_image_ids()

    started = time.monotonic()
    compose_stack.build_stand_ins(tmp_path / "stand-ins")
    wheel_dir = compose_stack.wheels()
    root = tmp_path / "checkout"
    compose_stack.copy_checkout(root, wheel_dir)
    # The worker runs as uid 1000 (APP_UID) and writes into the bind-mounted ./data and ./models.
    for folder in ("data", "models"):
        for path in [root / folder, *(root / folder).rglob("*")]:
            os.chown(path, 1000, 1000)
    ports = {name: free_port() for name in ("KAFKA", "POSTGRES", "MLFLOW", "LUIGID", "PROMETHEUS", "PUBSUB")}
    stack = compose_stack.Stack(root, project=f"vectorai-test-{uuid.uuid4().hex[:8]}", env={
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        **{f"{name}_HOST_PORT": str(port) for name, port in ports.items()},
    })
    stack.compose("build", "mlflow", "worker")
    timings["build_s"] = time.monotonic() - started

    try:
        started = time.monotonic()
        stack.up_in_order(STARTED)
        timings["up_to_healthy_s"] = time.monotonic() - started

        started = time.monotonic()
        chain = stack.compose("run", "--rm", "--no-deps", "worker", "luigi", "--module", "tasks", "PredictTask",
                              "--scheduler-host", "luigid", "--scheduler-port", "8082",
                              "--stream-transport", "kafka", "--epochs", str(EPOCHS))
        timings["chain_s"] = time.monotonic() - started
        assert ":)" in chain.stdout + chain.stderr, chain.stderr[-6000:]

        # The worker resizes photos with the extension its image compiled, not Pillow's slower path.
        resize = stack.compose("run", "--rm", "--no-deps", "worker", "python", "-c",
                               "from vectorai import resize; print('accelerated:', resize.accelerated())")
        assert "accelerated: True" in resize.stdout, resize.stdout[-2000:] + resize.stderr[-4000:]

        # Rows in the container's PostgreSQL: every image the stream sent, once, classified.
        [manifest] = (root / "data" / "stream" / "manifests").glob("kafka-*.json")
        sent = json.loads(manifest.read_text())["ids"]
        rows = stack.psql("vectorai", "SELECT source, message_id, predicted_class, true_label FROM prediction")
        assert sorted(row[1] for row in rows) == sorted(sent) and len(sent) == 200
        assert {row[0] for row in rows} == {"kafka"}
        correct = sum(row[2] == row[3] for row in rows)
        assert correct >= 0.8 * len(rows), f"{correct} of {len(rows)} classified right"
        assert stack.psql("vectorai", "SELECT count(*) FROM dead_letter") == [["0"]]

        # The run in the MLflow server, and the version it registered as champion.
        experiment = get_json(ports["MLFLOW"], "/api/2.0/mlflow/experiments/get-by-name", experiment_name="vectorai")
        runs = get_json(ports["MLFLOW"], "/api/2.0/mlflow/runs/search",
                        body={"experiment_ids": [experiment["experiment"]["experiment_id"]]}).get("runs", [])
        finished = [r for r in runs if r["info"]["status"] == "FINISHED"]
        assert len(finished) == 1, runs
        params = {p["key"]: p["value"] for p in finished[0]["data"].get("params", [])}
        assert params.get("epochs") == str(EPOCHS), params
        assert finished[0]["data"].get("metrics"), "the training run logged no metrics"
        models = get_json(ports["MLFLOW"], "/api/2.0/mlflow/registered-models/search")["registered_models"]
        champions = [(m["name"], a["version"]) for m in models for a in m.get("aliases", []) if a["alias"] == "champion"]
        assert len(champions) == 1, models
        version = get_json(ports["MLFLOW"], "/api/2.0/mlflow/model-versions/get",
                           name=champions[0][0], version=champions[0][1])["model_version"]
        assert version["run_id"] == finished[0]["info"]["run_id"]

        # luigid's API: every task of the chain done, by the worker in its container.
        tasks = get_json(ports["LUIGID"], "/api/task_list", data=json.dumps({"status": "DONE"}))["response"]
        families = sorted(task["name"] for task in tasks.values())
        assert families == sorted(CHAIN), families
        assert all("username=vectorai" in task["worker_running"] for task in tasks.values())

        # luigid's history tables in the container's PostgreSQL: each task pending, running, done.
        events = stack.psql("luigi", "SELECT t.name, e.event_name FROM tasks t JOIN task_events e ON e.task_id = t.id")
        assert {name: sorted(e for n, e in events if n == name) for name in CHAIN} == \
            {name: ["DONE", "PENDING", "RUNNING"] for name in CHAIN}
    finally:
        started = time.monotonic()
        stack.compose("down", "--volumes", check=False)
        timings["down_s"] = time.monotonic() - started
        print("compose test timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))

    assert stack.leftovers() == {"containers": [], "pods": [], "volumes": [], "networks": []}
    # Only the stable-tagged images remain, whose layers the next run reuses; an image a
    # rebuild took a tag from is removed (it was this test's, and nothing uses it now).
    stable_now = compose_stack.stable_image_ids()
    for superseded in (stable_before - stable_now) | (compose_stack.top_level_images() - images_before - stable_now):
        compose_stack.podman("rmi", superseded, check=False)
    assert compose_stack.top_level_images() - images_before <= stable_now, compose_stack.podman("images").stdout
