"""Operating luigid as the compose stack and `make luigid` configure it (docker/luigid.cfg):
the chain's graph, task history in a real PostgreSQL, retries of a batch run whose broker is down,
and luigid's own Prometheus /metrics. Every test runs a real luigid on a free loopback port and
real workers.

One fresh chain (``fresh_chain``: a quick model trained, exported, registered on a real MLflow
server, promoted, streamed and predicted) runs once through luigid for the tests that look at a
whole run: the graph, the MLflow link, the registry on the server, the history."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from services.common import free_port, port_open
from tests.conftest import REPO, Project, fresh_pg_database, new_project, pg_rows, unique_name
from tests.fixtures_mlflow import NO_TELEMETRY, mlflow_api

pytestmark = [pytest.mark.luigid, pytest.mark.postgres]

LUIGID_CFG = REPO / "docker" / "luigid.cfg"
CHAIN = {"SplitData", "TrainModel", "ExportOnnx", "PromoteModel", "StreamData", "PredictTask"}


def history_url(database_url: str) -> str:
    """The SQLAlchemy URL for a ``postgresql://`` one: SQLAlchemy 2.1 takes a bare postgresql://
    for psycopg 3, which is not installed, so the driver is named as docker/luigid.cfg says."""
    scheme, sep, rest = database_url.partition("://")
    assert sep and scheme == "postgresql", database_url
    return f"postgresql+psycopg2://{rest}"


@dataclass
class Luigid:
    """A real luigid reading docker/luigid.cfg, with only the timings a test needs changed."""

    workdir: Path
    env: dict[str, str]
    history_db: str = ""  # postgresql:// URL of the history database, when there is one
    overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "luigid.log"

    def write_config(self) -> Path:
        # Raw (no interpolation), so the ${...} references reach luigid as the committed file has them.
        config = configparser.ConfigParser(interpolation=None)
        config.read(LUIGID_CFG, encoding="utf-8")
        for key, value in self.overrides.items():
            config.set("scheduler", key, value)
        path = self.workdir / "luigid.cfg"
        with open(path, "w", encoding="utf-8") as fh:
            config.write(fh)
        return path

    def start(self) -> "Luigid":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUIGI")}
        env.update({"LUIGI_CONFIG_PATH": str(self.write_config()), **self.env})
        # cwd is the test's own dir, so no luigi.cfg of the checkout is read as well.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "luigid"), "--port", str(self.port), "--address", "127.0.0.1",
                 "--state-path", str(self.workdir / "state.pickle")],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"luigid did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: luigid saves its state, as `docker compose stop` makes it
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=20) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")

    def api(self, method: str, payload: dict) -> dict:
        status, body = self.get(f"/api/{method}?" + urllib.parse.urlencode({"data": json.dumps(payload)}))
        assert status == 200, body[-2000:]
        return json.loads(body)["response"]

    def tasks(self, status: str) -> dict[str, str]:
        """task_id -> family of the tasks luigid holds in ``status``."""
        listed = self.api("task_list", {"status": status, "upstream_status": "", "search": ""})
        return {task_id: task["name"] for task_id, task in listed.items()}

    def metrics(self) -> dict[tuple[str, str], float]:
        """(sample name, family label) -> value, parsed from /metrics with Prometheus' own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        assert status == 200, body[-2000:]
        return {(sample.name, sample.labels.get("family", "")): sample.value
                for family in text_string_to_metric_families(body) for sample in family.samples}

    def worker_args(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]


@pytest.fixture
def luigid_with_history(tmp_path, pg_database):
    server = Luigid(tmp_path / "luigid", env={"LUIGID_RECORD_TASK_HISTORY": "true",
                                             "LUIGI_TASK_HISTORY_DB": history_url(pg_database)},
                    history_db=pg_database)
    yield server.start()
    server.stop()


def history(database_url: str) -> dict[str, list[dict]]:
    """Family -> its task records (events oldest first, parameters), read from luigi's tables."""
    records: dict[str, list[dict]] = {}
    for task in pg_rows(database_url, "SELECT id, task_id, name, host FROM tasks ORDER BY id"):
        events = pg_rows(database_url, f"SELECT event_name FROM task_events WHERE task_id = {task['id']} "
                                       "ORDER BY ts, id")
        params = pg_rows(database_url, f"SELECT name, value FROM task_parameters WHERE task_id = {task['id']}")
        records.setdefault(task["name"], []).append({
            **task, "events": [e["event_name"] for e in events], "params": {p["name"]: p["value"] for p in params}})
    return records


def assert_history_pages(server: Luigid, records: dict[str, list[dict]]) -> None:
    """The pages a user opens: /history (latest runs), by name, and one task's events by id."""
    status, page = server.get("/history")
    assert status == 200, page[-3000:]
    for family in CHAIN:
        assert f">{family}</a>" in page, f"{family} missing from /history"
    status, page = server.get("/history/by_name/PredictTask")
    assert status == 200, page[-3000:]
    assert page.count(">PredictTask</a>") == len(records["PredictTask"])
    for record in records["PredictTask"]:
        status, page = server.get(f"/history/by_id/{record['id']}")
        assert status == 200, page[-3000:]
        # Its parameters, and its events newest first.
        assert re.search(rf"<td>run_at</td>\s*<td>{re.escape(record['params']['run_at'])}</td>", page), page[-3000:]
        shown = re.findall(r"<td>(PENDING|RUNNING|DONE|FAILED|DISABLED)</td>", page)
        assert shown[::-1] == record["events"], (shown, record["events"])


@dataclass
class FreshChain:
    """The whole chain of a fresh project, run once through a luigid that records its history."""

    project: Project
    server: Luigid
    mlflow: str  # the MLflow server it logged to (its URL, without the password the project gives)
    model_name: str  # the registered model, of this chain's own on the shared server


@pytest.fixture(scope="module")
def fresh_chain(tmp_path_factory, postgres_url, shared_mlflow) -> Iterator[FreshChain]:
    """A fresh project (a quick 1-epoch model), so every task of the chain runs, once, through a
    luigid with its history in PostgreSQL, training logged to the session's MLflow server under a
    URI with a password (a server without authentication ignores it; it must never be shown).
    The tests below each look at it from their side; the one that restarts luigid comes last."""
    root = tmp_path_factory.mktemp("fresh-chain")
    with fresh_pg_database(postgres_url) as database:
        server = Luigid(root / "luigid", env={"LUIGID_RECORD_TASK_HISTORY": "true",
                                              "LUIGI_TASK_HISTORY_DB": history_url(database)}, history_db=database)
        server.start()
        try:
            project = new_project(root / "fresh")
            project.set("mlflow", tracking_uri=f"http://alice:s3cret-pw@{shared_mlflow.host}",
                        experiment=unique_name("fresh"))
            name = unique_name("vectorai-mnist")
            project.set("registry", model_name=name)
            project.luigi("PredictTask", "--epochs", "1", "--stream-size", "20", *server.worker_args(), local=False,
                          extra_env=NO_TELEMETRY)
            yield FreshChain(project, server, shared_mlflow.url, name)
        finally:
            server.stop()


def test_chain_through_luigid_shows_every_task_and_dependency(fresh_chain):
    server = fresh_chain.server
    families = {family: task_id for task_id, family in server.tasks("DONE").items()}
    assert set(families) == {"SplitData", "TrainModel", "ExportOnnx", "PromoteModel", "StreamData", "PredictTask"}

    graph = server.api("dep_graph", {"task_id": families["PredictTask"], "include_done": True})
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
    status, page = server.get("/static/visualiser/index.html")
    assert status == 200 and "<html" in page.lower()


@pytest.mark.mlflow
def test_training_links_to_its_run_on_an_mlflow_server_without_the_password(fresh_chain):
    project, mlflow_server = fresh_chain.project, fresh_chain.mlflow
    done = fresh_chain.server.api("task_list", {"status": "DONE", "upstream_status": "", "search": ""})
    tasks = {task["name"]: task for task in done.values()}
    train, export = tasks["TrainModel"], tasks["ExportOnnx"]
    url = train["tracking_url"]
    assert url and url.startswith(f"{mlflow_server}/#/experiments/") and "s3cret" not in url and "alice" not in url
    assert export["tracking_url"] == url  # the ONNX model is logged to the same run
    assert train["progress_percentage"] == 100 and train["status_message"].startswith("epoch 1/1: loss ")
    assert "val_accuracy" in train["status_message"] and "s3cret" not in train["status_message"]

    # The link answers (the UI's page), and the run it names is the one that was trained.
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
    experiment_id, run_id = re.fullmatch(r".*/#/experiments/([^/]+)/runs/([^/]+)", url).groups()
    run = mlflow_api(mlflow_server, "runs/get", run_id=run_id)["run"]
    model_name = next((project.root / "models").iterdir()).name
    assert run["info"]["experiment_id"] == experiment_id and run["info"]["run_name"] == model_name
    assert run["info"]["status"] == "FINISHED" and run_id in train["status_message"]
    assert {m["key"] for m in run["data"]["metrics"]} >= {"val_accuracy", "test_accuracy"}
    listed = mlflow_api(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])
    onnx = mlflow_api(mlflow_server, "artifacts/list", run_id=run_id, path="onnx").get("files", [])
    assert "model.keras" in {a["path"] for a in listed} and "onnx/model.onnx" in {a["path"] for a in onnx}


@pytest.mark.mlflow
def test_the_registry_on_an_mlflow_server(fresh_chain):
    project, mlflow_server, name = fresh_chain.project, fresh_chain.mlflow, fresh_chain.model_name
    registered = mlflow_api(mlflow_server, "registered-models/get", name=name)["registered_model"]
    assert {a["alias"]: a["version"] for a in registered.get("aliases", [])} == {"champion": "1"}
    rows = sqlite_rows(project)
    assert {r["model_version"] for r in rows} == {f"{name}/1"} and len(rows) == 20
    tags = {t["key"]: t["value"] for t in mlflow_api(mlflow_server, "model-versions/get", name=name,
                                                     version="1")["model_version"]["tags"]}
    cached = project.data / "mlflow" / "models-cache" / name / "1" / "model.onnx"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == tags["sha256"]

    proc = project.luigi("PredictTask", "--require-stream", "false", "--run-at", "bad", "--model-uri",
                         "models:/nope@champion", check=False, extra_env=NO_TELEMETRY)
    assert proc.returncode == 30 and "Traceback" not in proc.stderr
    assert "vectorai error: model models:/nope@champion: " in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr


def sqlite_rows(project: Project) -> list[sqlite3.Row]:
    """The prediction rows of a project that stores them in its SQLite file."""
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM prediction ORDER BY message_id").fetchall()


def test_history_in_postgresql_holds_the_chain_and_survives_a_restart(fresh_chain):
    server, project = fresh_chain.server, fresh_chain.project
    records = history(server.history_db)
    assert set(records) == CHAIN
    for family, [record] in records.items():
        # Each task once, with the life it had: scheduled, run on this machine, done.
        assert record["events"] == ["PENDING", "RUNNING", "DONE"], (family, record["events"])
        assert record["host"], family
    assert records["SplitData"][0]["params"]["dataset"] == "mnist-sample"
    assert records["TrainModel"][0]["params"]["epochs"] == "1"
    assert records["PredictTask"][0]["params"]["run_at"] == "adhoc"
    assert_history_pages(server, records)

    # luigid's own counters: every task of the chain started and finished once, none failed.
    metrics = server.metrics()
    for family in CHAIN:
        assert metrics[("luigi_task_started_total", family)] == 1, family
        assert metrics[("luigi_task_done_total", family)] == 1, family
        assert metrics.get(("luigi_task_failed_total", family), 0) == 0, family

    server.restart()
    assert history(server.history_db) == records
    assert_history_pages(server, records)
    # Its state file brought the finished graph back too.
    assert set(server.tasks("DONE").values()) == CHAIN

    # The restarted luigid goes on recording into the same tables.
    project.luigi("PredictTask", "--epochs", "1", "--stream-size", "20", "--run-at", "after-restart",
                  *server.worker_args(), local=False, extra_env=NO_TELEMETRY)
    predictions = history(server.history_db)["PredictTask"]
    assert [r["params"]["run_at"] for r in predictions] == ["adhoc", "after-restart"]
    assert predictions[1]["events"] == ["PENDING", "RUNNING", "DONE"]
    assert_history_pages(server, history(server.history_db))


def stored_ids(database_url: str) -> list[str]:
    """message_id of every prediction row; none before PredictTask has created its table."""
    if pg_rows(database_url, "SELECT to_regclass('prediction') IS NULL AS missing")[0]["missing"]:
        return []
    return [r["message_id"] for r in pg_rows(database_url, "SELECT message_id FROM prediction")]


@pytest.mark.kafka
def test_predict_failed_while_the_broker_is_down_is_retried_and_completes(
        project, luigid_with_history, kafka_broker, kafka_bootstrap):
    server = luigid_with_history
    # Only the delay is shortened (five minutes in production); retry_count and
    # prune_on_get_work are the committed ones. luigid must be restarted to read it.
    server.overrides["retry_delay"] = "8"
    server.restart()

    project.use_kafka(kafka_bootstrap, topic=unique_name("retry"), connect_timeout_ms=3000)
    project.use_postgres(server.history_db)
    project.set("PredictTask", require_stream="false", stream_timeout_ms=3000)
    project.luigi("StreamData")
    [manifest] = (project.data / "stream" / "manifests").glob("*.json")
    sent = json.loads(manifest.read_text())["count"]
    assert sent > 0

    kafka_broker.stop()
    # As cron would run it, plus --worker-keep-alive: the worker waits for the retry instead of exiting.
    worker = project.spawn("PredictTask", "--run-at", "retried", "--worker-keep-alive",
                           *server.worker_args(), local=False)
    try:
        deadline = time.monotonic() + 120
        while "PredictTask" not in server.tasks("FAILED").values():
            assert worker.poll() is None, f"the worker exited instead of waiting:\n{worker.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "PredictTask did not fail with the broker down"
            time.sleep(0.5)
        assert not stored_ids(server.history_db), "the failed attempt stored predictions"
        kafka_broker.restart()
        output, _ = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output[-4000:]
    assert "vectorai error: transport kafka" in output, output[-4000:]  # the first attempt's failure
    assert "failed tasks but they all succeeded in a retry" in output, output[-4000:]

    ids = stored_ids(server.history_db)
    assert len(ids) == len(set(ids)) == sent
    [report] = [json.loads(p.read_text()) for p in (project.data / "reports").glob("*-retried-*.json")]
    assert report["consumed"] == report["predicted"] == sent

    [record] = history(server.history_db)["PredictTask"]
    events = record["events"]
    assert events[0] == "PENDING" and events[-1] == "DONE" and "FAILED" in events, events
    assert events.count("FAILED") < 3, events  # retried before retry_count disabled it

    metrics = server.metrics()
    assert metrics[("luigi_task_failed_total", "PredictTask")] == events.count("FAILED")
    assert metrics[("luigi_task_done_total", "PredictTask")] == 1
    assert metrics[("luigi_task_started_total", "PredictTask")] == events.count("RUNNING")


def run_make_luigid(tmp_path: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """`make luigid` as a user runs it, on a free port and a state file of the test's own.
    --assume-old: setup's venv is already installed; make must not reinstall it."""
    log = open(tmp_path / "make-luigid.log", "ab")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LUIGI", "MAKE"))}
    return subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(REPO), f"--assume-old={Path(sys.prefix) / '.installed'}",
         "luigid", f"VENV={sys.prefix}", f"LUIGID_PORT={port}", f"LUIGID_STATE_DIR={tmp_path / 'state'}"],
        env={**base, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, port: int) -> None:
    """SIGTERM to make's own process group (start_new_session), so luigid under it gets it too;
    make exits at once, luigid once it has saved its state and closed its port."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while port_open(port):
        assert time.monotonic() < deadline, "luigid did not stop on SIGTERM"
        time.sleep(0.2)


@pytest.mark.parametrize("with_history", [True, False], ids=["history-db-given", "no-history-db"])
def test_make_luigid_takes_the_history_database_from_the_environment(tmp_path, pg_database, with_history):
    port = free_port()
    env = {"LUIGI_TASK_HISTORY_DB": history_url(pg_database)} if with_history else {}
    proc = run_make_luigid(tmp_path, port, env)
    try:
        deadline = time.monotonic() + 60
        while not port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "make-luigid.log").read_text()[-3000:]
            time.sleep(0.2)
        server = Luigid(tmp_path, env={}, port=port)
        status, page = server.get("/history")
        tables = {r["tablename"] for r in pg_rows(pg_database, "SELECT tablename FROM pg_tables "
                                                               "WHERE schemaname = 'public'")}
        if with_history:
            assert status == 200 and "Luigi Task History" in page, page[-2000:]
            assert {"tasks", "task_events", "task_parameters"} <= tables
        else:
            # No history kept: the page has nothing to show and the database is left alone.
            assert status != 200
            assert not tables
        # Retries and metrics come from docker/luigid.cfg either way.
        assert server.get("/metrics")[0] == 200
        # The URL may hold a password: make must not echo it.
        assert history_url(pg_database) not in (tmp_path / "make-luigid.log").read_text()
    finally:
        stop_group(proc, port)
    assert (tmp_path / "state" / "state.pickle").exists(), "luigid's state was not saved where make said"
