"""The several-machine setup of tests/integration/test_cluster.py, built on one machine.

Hosts are network namespaces (tests/netns.py): ``sched`` runs luigid, ``db`` PostgreSQL (SSL
and scram-sha-256 only), ``kafka1``..``kafka3`` a KRaft cluster (SASL_SSL, SCRAM-SHA-512), and
``w1``/``w2`` the PredictTask workers. Every secret is generated here and reaches the servers
in 0600 files and the workers in their environment.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from services.cluster import (
    KAFKA_ADMIN_USER, SCRAM_MECHANISM, CertificateAuthority, KafkaSecrets, SecureKafkaNode, SecurePostgres,
)
from services.common import ManagedProcess, port_open, wait_ready
from tests.netns import Host, NetworkLab

LUIGID_PORT = 8082
KAFKA_HOSTS = ("kafka1", "kafka2", "kafka3")
HOSTS = ("sched", "db", *KAFKA_HOSTS, "w1", "w2")
DB_NAME = "vectorai"
DB_USER = "vectorai"
KAFKA_USER = "vectorai"


def _password() -> str:
    # Letters and digits only: no quoting in JAAS, SQL, URLs or Kafka's [name=...,password=...].
    return secrets.token_hex(16)


@dataclass
class ClusterSecrets:
    kafka: KafkaSecrets = field(default_factory=lambda: KafkaSecrets(
        admin_password=_password(), client_user=KAFKA_USER, client_password=_password(),
        keystore_password=_password()))
    postgres_superuser: str = field(default_factory=_password)
    postgres_app: str = field(default_factory=_password)

    def all(self) -> dict[str, str]:
        return {"kafka admin": self.kafka.admin_password, "kafka client": self.kafka.client_password,
                "keystore": self.kafka.keystore_password, "postgres superuser": self.postgres_superuser,
                "postgres app": self.postgres_app}


@dataclass
class Cluster:
    lab: NetworkLab
    workdir: Path
    ca: CertificateAuthority
    secrets: ClusterSecrets
    nodes: dict[str, SecureKafkaNode]
    postgres: SecurePostgres
    luigid: ManagedProcess

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes.values())

    @property
    def sched(self) -> Host:
        return self.lab["sched"]

    def database_url(self, password: str | None = "") -> str:
        """The workers' URL; ``password=None`` leaves it out."""
        return self.postgres.url(DB_USER, self.secrets.postgres_app if password == "" else password,
                                 DB_NAME, self.ca.cert)

    def kafka_client_settings(self) -> dict[str, object]:
        """kafka-python settings for the test process (on the bridge's address)."""
        return {"bootstrap_servers": self.bootstrap.split(","), "security_protocol": "SASL_SSL",
                "sasl_mechanism": SCRAM_MECHANISM, "sasl_plain_username": KAFKA_USER,
                "sasl_plain_password": self.secrets.kafka.client_password, "ssl_cafile": str(self.ca.cert)}

    def node_by_id(self, node_id: int) -> tuple[str, SecureKafkaNode]:
        return next((name, node) for name, node in self.nodes.items() if node.node_id == node_id)


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "A")


@contextmanager
def build_cluster() -> Iterator[Cluster]:
    """Hosts, CA, three brokers, PostgreSQL and luigid; all of it gone when the block ends."""
    lab = NetworkLab()
    # Not under pytest's basetemp (0700 root): the postgres user must enter the db work dir.
    workdir = Path(tempfile.mkdtemp(prefix="vectorai-cluster-"))
    os.chmod(workdir, 0o755)
    cluster: Cluster | None = None
    try:
        for name in HOSTS:
            lab.add_host(name)
        ca = CertificateAuthority.create(workdir / "ca")
        cluster_secrets = ClusterSecrets()
        voters = {i + 1: lab[name].address for i, name in enumerate(KAFKA_HOSTS)}
        nodes = {name: SecureKafkaNode(i + 1, lab[name].address, voters, workdir / name, lab[name].argv())
                 for i, name in enumerate(KAFKA_HOSTS)}
        cluster_id = _cluster_id()
        postgres = SecurePostgres(lab["db"].address, str(lab.network), workdir / "db", lab["db"].argv())
        with ThreadPoolExecutor(4) as pool:  # keytool and initdb: mostly JVM and process start-up
            jobs = [pool.submit(node.create, ca, cluster_secrets.kafka, cluster_id) for node in nodes.values()]
            jobs.append(pool.submit(postgres.create, ca, cluster_secrets.postgres_superuser))
            for job in jobs:
                job.result()
        for node in nodes.values():
            node.start()
        postgres.start()
        postgres.create_database(DB_USER, cluster_secrets.postgres_app, DB_NAME)
        luigid = ManagedProcess("luigid", workdir / "luigid.pid", workdir / "luigid.log")
        (workdir / "luigid").mkdir()
        sched = lab["sched"]
        luigid.start(sched.argv(str(Path(sys.executable).parent / "luigid"), "--address", sched.address,
                                "--port", str(LUIGID_PORT), "--state-path", str(workdir / "luigid" / "state.pickle"),
                                "--logdir", str(workdir / "luigid")))
        wait_ready(luigid, lambda: port_open(LUIGID_PORT, sched.address), 60, f"luigid on {sched.address}")
        for node in nodes.values():
            node.wait_started()
        cluster = Cluster(lab, workdir, ca, cluster_secrets, nodes, postgres, luigid)
        yield cluster
    finally:
        problems = lab.remove()  # kills everything still running on the hosts first
        shutil.rmtree(workdir, ignore_errors=True)
        leftovers = lab.leftovers()
        if problems or leftovers:
            raise RuntimeError(f"the cluster's hosts were not all removed: {problems} {leftovers}")


def create_topic(cluster: Cluster, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(**cluster.kafka_client_settings())
    try:
        admin.create_topics([NewTopic(topic, partitions, len(cluster.nodes),
                                      topic_configs={"min.insync.replicas": "2"})], timeout_ms=30000)
    finally:
        admin.close()


def partition_leaders(cluster: Cluster, topic: str) -> dict[int, int]:
    """Partition -> the node id that leads it now."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**cluster.kafka_client_settings())
    try:
        [description] = admin.describe_topics([topic])
        # kafka-python 3 names the fields as the Metadata response does.
        return {p["partition_index"]: p["leader_id"] for p in description["partitions"]}
    finally:
        admin.close()


def spawn_on(host: Host, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(host.argv(*argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:g}s")
        time.sleep(interval_s)
