"""A real single-node Apache Kafka broker (KRaft mode) run from Maven Central jars on the local JDK.

``install()`` fetches the broker's jars once with Maven (``services/kafka/pom.xml``);
``start()`` formats a fresh data dir and runs ``kafka.Kafka`` on free loopback ports;
``stop()`` / ``restart()`` keep that data dir and port, so tests can take the broker away
mid-run and bring it back with its topics and committed offsets intact.

The module-level functions drive one default broker whose whereabouts are kept in
``STATE_DIR/kafka.json``, so ``python -m services down`` in another shell can stop it.
Tests that want a broker of their own use :class:`KafkaBroker` with their own work dir.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common import (
    STATE_DIR, DefaultInstance, ManagedProcess, ServiceError, free_port, port_open, wait_ready,
)

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LIBS_DIR = STATE_DIR / "kafka-libs"
JVM_OPTIONS = ("-Xms128m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
START_TIMEOUT_S = 120.0

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
# The request log and the state-change log are very chatty at INFO.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


def install() -> Path:
    """Fetch the broker's jars into ``STATE_DIR/kafka-libs`` unless they are already there."""
    if LIBS_DIR.is_dir() and any(LIBS_DIR.glob("kafka_2.13-*.jar")):
        return LIBS_DIR
    if shutil.which("mvn") is None:
        raise ServiceError("Kafka: Maven (mvn) is not installed; it is needed once to fetch the jars")
    if shutil.which("java") is None:
        raise ServiceError("Kafka: no java on PATH; a JDK 17 or newer is needed")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # A private download dir, renamed only when complete: an interrupted download is never
    # mistaken for an install, and two sessions installing at once do not mix their files.
    partial = Path(tempfile.mkdtemp(prefix="kafka-libs.partial-", dir=STATE_DIR))
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={partial}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ServiceError(f"Kafka: fetching the jars with Maven failed:\n{output}")
    try:
        partial.rename(LIBS_DIR)
    except OSError:  # another session finished first; its jars are the same
        shutil.rmtree(partial, ignore_errors=True)
    return LIBS_DIR


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, url-safe base64 without padding (as ``random-uuid``)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # Kafka's tools refuse ids that look like an option
            return value


@dataclass
class KafkaBroker:
    """One broker: a work dir holding its config, data and logs, and the ports it listens on."""

    workdir: Path
    port: int
    controller_port: int

    @classmethod
    def create(cls, workdir: Path, port: int | None = None) -> "KafkaBroker":
        """Write the config into ``workdir`` and format its storage (does not start it)."""
        libs = install()
        workdir.mkdir(parents=True, exist_ok=True)
        broker = cls(workdir=workdir, port=port or free_port(), controller_port=free_port())
        broker._write_config()
        broker._java("kafka.tools.StorageTool", "format", "--ignore-formatted",
                     "--cluster-id", _cluster_id(), "--config", str(broker.properties_file),
                     libs=libs)
        broker.save()
        return broker

    @classmethod
    def load(cls, workdir: Path) -> "KafkaBroker":
        data = json.loads((workdir / "broker.json").read_text())
        return cls(workdir=Path(data["workdir"]), port=data["port"],
                   controller_port=data["controller_port"])

    def save(self) -> None:
        data = {**asdict(self), "workdir": str(self.workdir)}
        (self.workdir / "broker.json").write_text(json.dumps(data, indent=2))

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_file(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.workdir / "kafka.pid", self.workdir / "kafka.out")

    def running(self) -> bool:
        return self.process.pid() is not None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Run the broker and wait until a client can list topics; return the bootstrap address."""
        if self.running():
            return self.bootstrap_servers
        if port_open(self.port):
            raise ServiceError(f"Kafka: port {self.port} is already taken by another process")
        libs = install()
        self.process.start(
            ["java", *JVM_OPTIONS, *self._log_options(), "-cp", f"{libs}/*", "kafka.Kafka",
             str(self.properties_file)],
            cwd=self.workdir,
        )
        wait_ready(self.process, self._answers, timeout_s,
                   f"Kafka broker on {self.bootstrap_servers}", self.log_file)
        return self.bootstrap_servers

    def stop(self, graceful: bool = True) -> None:
        """Stop the broker, keeping its data; ``graceful=False`` kills it like a crash would."""
        self.process.stop(timeout_s=30.0, sig=signal.SIGTERM if graceful else signal.SIGKILL)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Stop (if running) and start again on the same data dir and port."""
        self.stop()
        return self.start(timeout_s)

    def remove(self) -> None:
        """Stop the broker and delete its work dir."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _answers(self) -> bool:
        if not port_open(self.port):
            return False
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                 bootstrap_timeout_ms=3000, request_timeout_ms=3000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def _write_config(self) -> None:
        data_dir = self.workdir / "data"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Few threads: the broker shares two cores with the tests driving it.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.retention.hours": "24",
            "auto.create.topics.enable": "false",
        }
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))

    def _log_options(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.workdir}"]

    def _java(self, main_class: str, *args: str, libs: Path) -> None:
        result = subprocess.run(
            ["java", *JVM_OPTIONS, *self._log_options(), "-cp", f"{libs}/*", main_class, *args],
            capture_output=True, text=True, cwd=self.workdir,
        )
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ServiceError(f"Kafka: {main_class} {args[0]} failed:\n{output}")


# --- the default broker, shared by `python -m services` commands in any shell -----------------


_DEFAULT = DefaultInstance("Kafka", KafkaBroker.create, KafkaBroker.load, lambda workdir: KafkaBroker(workdir, 0, 0))
start = _DEFAULT.start
stop = _DEFAULT.stop
restart = _DEFAULT.restart
status = _DEFAULT.status
