"""Several machines: luigid, a three-broker Kafka cluster, PostgreSQL and two PredictTask workers,
each on a host of its own (a network namespace), with authentication and encryption on, and
faults: a broker killed, a worker host cut off mid-batch.

The hosts reach each other only by their addresses on a private bridge (tests/netns.py);
Kafka takes SASL_SSL with SCRAM-SHA-512, PostgreSQL only SSL with scram-sha-256 passwords
(the workers verify both against the test's CA). Needs root for the namespaces: skipped with
the reason without it, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IN_CI, Project, new_project

pytestmark = [pytest.mark.cluster, pytest.mark.system]

N = 20_000
PARTITIONS = 4
TOPIC = "images"
GROUP = "vectorai-predict"
TOOLS = ("ip", "openssl", "keytool", "java", "runuser")


#: The publisher, run on a worker host: every image of the .npz, keyed big-00000000-<digest>...
_PUBLISH = """
import os, sys
import numpy as np
from vectorai.streaming import publish_images
from vectorai.transports.kafka import KafkaTransport

sample, bootstrap, topic, ca = sys.argv[1:5]
data = np.load(sample)
with KafkaTransport(bootstrap_servers=bootstrap, topic=topic, create_topic=False, security_protocol="SASL_SSL",
                    sasl_mechanism="SCRAM-SHA-512", sasl_username="vectorai",
                    sasl_password=os.environ["KAFKA_SASL_PASSWORD"], ssl_cafile=ca) as transport:
    ids = publish_images(transport, data["x"], data["y"], dataset="big", encoding="raw", timeout_s=120)
print("published", len(ids))
"""


def _missing() -> str | None:
    """Why this machine cannot build the hosts, or None."""
    if os.geteuid() != 0:
        return "the cluster test builds network namespaces, which needs root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the cluster test needs {', '.join(missing)} on PATH"
    from services.common import ServiceError

    try:
        from services.kafka import install as install_kafka
        from services.postgres import install as install_postgres

        install_kafka()
        install_postgres()
    except ServiceError as err:
        return str(err)
    return None


@pytest.fixture
def cluster():
    reason = _missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from tests.cluster_hosts import build_cluster

    with build_cluster() as built:
        yield built


def _worker_project(root: Path, trained_home: Path, cluster) -> Project:
    """A worker's own project: settings in luigi.cfg, secrets only in its environment."""
    from services.cluster import SCRAM_MECHANISM
    from tests.cluster_hosts import KAFKA_USER

    project = new_project(root, base=trained_home)
    project.set("stream", transport="kafka", topic=TOPIC, group=GROUP, encoding="raw")
    project.set("kafka", bootstrap_servers=cluster.bootstrap, security_protocol="SASL_SSL",
                sasl_mechanism=SCRAM_MECHANISM, sasl_username=KAFKA_USER, ssl_cafile=cluster.ca.cert,
                create_topic="false", connect_timeout_ms=10000)
    # Small batches, one inference thread: the run lasts long enough for the faults, and the
    # 20 s wait for new messages outlasts the 10 s session timeout of a vanished member.
    # The exported model by path, as a deployment would: the workers schedule PredictTask only.
    [model] = (project.root / "models").glob("*/onnx/model.onnx")
    project.set("PredictTask", require_stream="false", predict_batch_size=50, stream_timeout_ms=20000,
                inference_threads=1, model_path=model)
    project.env = {"DATABASE_URL": cluster.database_url(),
                   "KAFKA_SASL_PASSWORD": cluster.secrets.kafka.client_password}
    return project


def _luigi_on(host, project: Project, log: Path, *args: str, env: dict[str, str] | None = None,
              scheduler: tuple[str, int] | None = None) -> subprocess.Popen:
    from tests.cluster_hosts import spawn_on

    argv = [sys.executable, "-m", "luigi", "--module", "tasks", *args]
    if scheduler is None:
        argv.append("--local-scheduler")
    else:
        argv += ["--scheduler-host", scheduler[0], "--scheduler-port", str(scheduler[1])]
    return spawn_on(host, argv, project.command_env(env), project.root, log)


def _rows(cluster) -> tuple[int, int]:
    """(rows, distinct message ids) in the results table, read over SSL from the bridge."""
    import psycopg2

    conn = psycopg2.connect(cluster.database_url(), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('prediction') IS NULL")
            if cur.fetchone()[0]:
                return 0, 0
            cur.execute("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM prediction")
            return cur.fetchone()
    finally:
        conn.close()


def _offsets(cluster) -> tuple[dict[int, int], dict[int, int]]:
    """(the group's committed offset, the end offset) per partition of the topic."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError

    settings = cluster.kafka_client_settings()
    admin = KafkaAdminClient(**settings)
    reader = KafkaConsumer(**settings)
    try:
        # The first ask creates the offsets topic; its coordinator takes a moment to come up.
        deadline = time.monotonic() + 60
        while True:
            try:
                offsets = admin.list_group_offsets([GROUP]).get(GROUP, {})
                break
            except (CoordinatorNotAvailableError, NotCoordinatorError, CoordinatorLoadInProgressError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == TOPIC}
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        ends = {tp.partition: end for tp, end in reader.end_offsets(partitions).items()}
        return committed, ends
    finally:
        admin.close()
        reader.close()


def _luigid_tasks(cluster) -> dict[str, dict]:
    """Every task luigid knows, by id, whatever its status (with its parameters)."""
    from tests.cluster_hosts import LUIGID_PORT

    tasks: dict[str, dict] = {}
    for status in ("PENDING", "RUNNING", "DONE", "FAILED", "DISABLED"):
        query = urllib.parse.urlencode({"data": json.dumps({"status": status, "upstream_status": "", "search": ""})})
        url = f"http://{cluster.sched.address}:{LUIGID_PORT}/api/task_list?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            tasks.update(json.loads(response.read())["response"])
    return tasks


def _cmdlines_with(secrets: dict[str, str]) -> list[str]:
    """Every process whose command line holds one of ``secrets``, as 'pid: what'."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            found += [f"{entry.name}: {what}" for what, value in secrets.items() if value.encode() in cmdline]
    return found


def _files_with(roots: list[Path], secrets: dict[str, str], skip: set[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not any(path == s or s in path.parents for s in skip):
                data = path.read_bytes()
                found += [f"{path}: {what}" for what, value in secrets.items() if value.encode() in data]
    return found


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "vectorai error:" in line]
    assert len(lines) == 1, f"expected one 'vectorai error:' line, got {len(lines)}:\n{output[-4000:]}"
    return lines[0]


def test_two_workers_on_their_own_hosts_lose_and_repeat_nothing_through_broker_and_host_failures(
        cluster, trained_home, tmp_path):
    from tests.cluster_hosts import LUIGID_PORT, create_topic, partition_leaders, wait_until
    from vectorai.prepare import load_stream_sample

    started = time.monotonic()
    lab, secrets = cluster.lab, cluster.secrets.all()
    create_topic(cluster, TOPIC, PARTITIONS)

    # 20,000 images: the 200-image stream sample tiled, ids big-00000000-<digest>...
    [split_dir] = (trained_home / "data" / "processed" / "mnist-sample").iterdir()
    sample = load_stream_sample(split_dir / "stream.npz")
    reps = -(-N // len(sample))
    np.savez(tmp_path / "big.npz", x=np.concatenate([sample.images] * reps)[:N],
             y=np.concatenate([sample.labels] * reps)[:N])
    w1 = _worker_project(tmp_path / "w1", trained_home, cluster)
    w2 = _worker_project(tmp_path / "w2", trained_home, cluster)
    logs = tmp_path / "logs"
    logs.mkdir()

    # Published from w2's host with the library's publish path (the transport's producer is
    # idempotent with acks=all), to the brokers by their addresses.
    from tests.cluster_hosts import spawn_on

    publisher = spawn_on(lab["w2"], [sys.executable, "-c", _PUBLISH, str(tmp_path / "big.npz"), cluster.bootstrap,
                                     TOPIC, str(cluster.ca.cert)], w2.command_env(), w2.root, logs / "publish.log")
    assert publisher.wait(timeout=300) == 0, (logs / "publish.log").read_text()[-4000:]
    published_s = time.monotonic() - started
    committed, ends = _offsets(cluster)
    assert sum(ends.values()) == N and committed == {}, (ends, committed)

    # --- refusals: each fails in one line naming the server and the cause, consuming nothing --
    w2.config["kafka"].pop("ssl_cafile")  # the CA for the "no CA" refusal only, put back below
    w2.write_config()
    # A longer connect timeout for the Kafka refusals: the three runs start at once on two cores,
    # and the broker's answer to a SCRAM handshake (4,096 PBKDF2 rounds) must arrive within it for
    # the line to name the refusal rather than a timeout.
    patient = ("--kafka-connect-timeout-ms", "40000")
    refusals = {
        "wrong SASL password": _luigi_on(lab["w1"], w1, logs / "refused-sasl.log", "PredictTask", "--run-at",
                                         "refused-sasl", *patient, env={"KAFKA_SASL_PASSWORD": "not-the-password"}),
        "no CA": _luigi_on(lab["w2"], w2, logs / "refused-ca.log", "PredictTask", "--run-at", "refused-ca", *patient),
        "no database password": _luigi_on(lab["w1"], w1, logs / "refused-db.log", "PredictTask", "--run-at",
                                          "refused-db", env={"DATABASE_URL": cluster.database_url(None)}),
    }
    expected = {"wrong SASL password": r"broker 10\.[\d.]+:9092 refused the connection: SaslAuthenticationFailedError"
                                       r".*invalid credentials",
                "no CA": r"broker 10\.[\d.]+:9092 refused the connection: .*CERTIFICATE_VERIFY_FAILED",
                "no database password": re.escape(f'server at "{cluster.postgres.address}", port 5432') +
                                        r".*no password supplied"}
    for what, proc in refusals.items():
        assert proc.wait(timeout=180) != 0, f"{what}: the run did not fail"
        log = next(p for p in logs.glob("refused-*.log") if p.stem.endswith(
            {"wrong SASL password": "sasl", "no CA": "ca", "no database password": "db"}[what]))
        line = _one_error_line(log.read_text())
        assert re.search(expected[what], line), f"{what}: {line}"
    assert _rows(cluster) == (0, 0)
    assert _offsets(cluster)[0] == {}, "a refused worker committed offsets"
    w2.set("kafka", ssl_cafile=cluster.ca.cert)

    # --- the run: two workers through luigid, one consumer group ------------------------------
    scheduler = (cluster.sched.address, LUIGID_PORT)
    workers = {name: _luigi_on(lab[name], project, logs / f"{name}.log", "PredictTask", "--run-at", name,
                               scheduler=scheduler)
               for name, project in (("w1", w1), ("w2", w2))}

    def progress(at_least: int) -> int:
        for name, proc in workers.items():
            assert proc.poll() is None, f"{name} exited early:\n{(logs / f'{name}.log').read_text()[-4000:]}"
        rows, _ = _rows(cluster)
        return rows if rows >= at_least else 0

    run_started = time.monotonic()
    wait_until(lambda: progress(2000), 300, "2,000 rows were not stored")
    # Everything runs now: no secret may be on any process's command line.
    assert _cmdlines_with(secrets) == []

    leaders = partition_leaders(cluster, TOPIC)
    victim_id, led = Counter(leaders.values()).most_common(1)[0]
    victim_name, victim = cluster.node_by_id(victim_id)
    victim.kill()
    at_broker_kill = _rows(cluster)[0]
    # Two brokers of three keep the topic writable (min.insync.replicas=2): the run goes on.
    wait_until(lambda: progress(at_broker_kill + 3000), 300, f"no progress after {victim_name} was killed")

    lab.cut("w1")  # mid-batch: w1 loses every connection without leaving the group
    at_cut = _rows(cluster)[0]
    time.sleep(1.0)
    workers["w1"].send_signal(signal.SIGKILL)  # a dead host runs nothing
    workers["w1"].wait(timeout=30)
    assert at_cut < N - 2000, f"the stream was nearly done ({at_cut} rows) before w1 was cut"

    time.sleep(3.0)
    victim.restart()
    victim.wait_started()
    assert workers["w2"].wait(timeout=600) == 0, (logs / "w2.log").read_text()[-4000:]
    run_s = time.monotonic() - run_started

    # --- what a user checks afterwards ------------------------------------------------------
    rows, distinct = _rows(cluster)
    assert (rows, distinct) == (N, N), f"{rows} rows, {distinct} distinct ids"
    import psycopg2

    with psycopg2.connect(cluster.database_url()) as conn, conn.cursor() as cur:
        cur.execute("SELECT message_id FROM prediction")
        assert {r[0].rsplit("-", 1)[0] for r in cur.fetchall()} == {f"big-{i:08d}" for i in range(N)}
    conn.close()

    [report_path] = (w2.data / "reports").glob("predict-kafka-w2-*.json")
    report = json.loads(report_path.read_text())
    assert report["consumed"] == (report["predicted"] + report["already_predicted"] + report["duplicates"]
                                  + report["dead_letters"]), report
    assert report["dead_letters"] == 0
    # w2 stored what w1 had not; w1 stored the rest before its host died.
    assert 0 < report["predicted"] < N, report
    assert not list((w1.data / "reports").glob("predict-kafka-w1-*.json")), "w1 finished although cut off"

    committed, ends = _offsets(cluster)
    assert committed == ends and sum(ends.values()) == N, (committed, ends)

    tasks = _luigid_tasks(cluster)
    predict = {t["params"]["run_at"]: t for t in tasks.values() if t["name"] == "PredictTask"}
    assert set(predict) == {"w1", "w2"}, sorted(predict)
    assert predict["w2"]["status"] == "DONE"
    assert predict["w1"]["status"] in ("RUNNING", "FAILED"), predict["w1"]["status"]  # its worker died

    # --- no password anywhere a user or another process can read ----------------------------
    assert not [what for what, value in secrets.items() if value in json.dumps(tasks)], "a secret in luigid"
    skip = {cluster.workdir / "db" / "data", cluster.workdir / "ca",
            *(node.properties_file for node in cluster.nodes.values()),
            *(node.workdir / "data" for node in cluster.nodes.values())}
    keystores = set(cluster.workdir.rglob("*.p12"))
    assert _files_with([cluster.workdir, tmp_path], secrets, skip | keystores) == []
    assert _cmdlines_with(secrets) == []

    print(f"\ncluster test: published {N} in {published_s:.0f}s (from start), run with faults {run_s:.0f}s, "
          f"test body {time.monotonic() - started:.0f}s; {victim_name} led {led} of {PARTITIONS} partitions; "
          f"w2 predicted {report['predicted']}, found {report['already_predicted']} already stored")
