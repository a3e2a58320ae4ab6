"""Secured servers for a multi-host setup: a KRaft Kafka node with SASL_SSL (SCRAM-SHA-512) and a
PostgreSQL 15 that takes only SSL connections with scram-sha-256 passwords, plus the test CA
that signs their certificates.

Each server listens on one given address (a host of its own, e.g. a network namespace) rather
than loopback; ``launcher`` is the argv prefix that runs a program on that host (``ip netns exec
NS``). Secrets never go on a command line, where any user can read them in /proc/*/cmdline: they
reach openssl and keytool through the environment, the JVM through 0600 files (its properties
and an @argfile), and initdb through --pwfile.

The single-broker, trust-auth launchers in kafka.py and postgres.py are unchanged; this module
reuses their installs (the same Maven Central jars, the Debian PostgreSQL 15 binaries).
"""

from __future__ import annotations

import os
from secrets import randbits
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from services.common import ManagedProcess, ServiceError, children_of, cpu_seconds, process_alive, wait_ready
from services.kafka import install as install_kafka
from services.postgres import BIN_DIR as PG_BIN_DIR, install as install_postgres

KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
POSTGRES_PORT = 5432
#: Small heaps and few JIT/GC threads: three brokers, PostgreSQL and two workers share two cores.
KAFKA_JVM_OPTIONS = ("-Xms64m", "-Xmx320m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
                     "-XX:CICompilerCount=2", "-Djava.awt.headless=true")
#: The broker user and the client user created when the storage is formatted.
KAFKA_ADMIN_USER = "admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"


def write_secret(path: Path, text: str, owner: str | None = None) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never wider)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if owner is not None:
        shutil.chown(path, owner, owner)
    return path


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None,
         cwd: Path | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, input=stdin,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        output = " | ".join((result.stdout + result.stderr).strip().splitlines()[-6:])
        raise ServiceError(f"{what} failed ({result.returncode}): {output}")
    return result.stdout


@dataclass
class CertificateAuthority:
    """A throwaway CA (openssl) in ``workdir`` that signs server certificates for IP addresses."""

    workdir: Path

    @property
    def cert(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def _key(self) -> Path:
        return self.workdir / "ca.key"

    @classmethod
    def create(cls, workdir: Path) -> "CertificateAuthority":
        if shutil.which("openssl") is None:
            raise ServiceError("openssl is not installed; it makes the test CA and certificates")
        workdir.mkdir(parents=True, exist_ok=True)
        ca = cls(workdir)
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca._key),
              "-out", str(ca.cert), "-days", "2", "-subj", "/CN=vectorai test CA",
              "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
             "openssl: making the CA")
        os.chmod(ca._key, 0o600)
        os.chmod(ca.cert, 0o644)
        return ca

    def sign(self, csr: Path, cert: Path, address: str) -> Path:
        """Sign ``csr`` for a server reached at IP ``address`` (its subjectAltName)."""
        extensions = cert.with_suffix(".ext")
        extensions.write_text(f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth,clientAuth\n"
                              "basicConstraints=CA:FALSE\n")
        # A random serial of its own rather than -CAcreateserial's shared ca.srl file, which one
        # CI run found empty ("Unable to load number from ca.srl") and failed the test's setup.
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self._key),
              "-set_serial", str(randbits(63) | 1), "-out", str(cert), "-days", "2", "-sha256",
              "-extfile", str(extensions)],
             f"openssl: signing the certificate for {address}")
        return cert

    def server_pem(self, name: str, address: str, owner: str | None = None) -> tuple[Path, Path]:
        """A key (0600, owned by ``owner``) and certificate for ``address``, as PEM files."""
        key, csr, cert = (self.workdir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        _run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
              "-subj", f"/CN={address}"], f"openssl: key for {name}")
        os.chmod(key, 0o600)
        if owner is not None:
            shutil.chown(key, owner, owner)
        return key, self.sign(csr, cert, address)

    def java_keystore(self, name: str, address: str, password: str) -> Path:
        """A PKCS12 keystore made with the JDK's keytool: a key pair for ``address``, its
        certificate signed by this CA, and the CA. The password reaches keytool through the
        environment (``-storepass:env``), never its command line."""
        if shutil.which("keytool") is None:
            raise ServiceError("keytool is not installed; it comes with the JDK that runs Kafka")
        store, csr, cert = (self.workdir / f"{name}.{ext}" for ext in ("p12", "csr", "pem"))
        store.unlink(missing_ok=True)
        env = {"KEYSTORE_PASSWORD": password}
        common = ["-keystore", str(store), "-storetype", "PKCS12", "-storepass:env", "KEYSTORE_PASSWORD"]
        _run(["keytool", "-genkeypair", *common, "-alias", name, "-keyalg", "RSA", "-keysize", "2048",
              "-validity", "2", "-dname", f"CN={address}", "-ext", f"SAN=IP:{address}"],
             f"keytool: key pair for {name}", env)
        _run(["keytool", "-certreq", *common, "-alias", name, "-file", str(csr), "-ext", f"SAN=IP:{address}"],
             f"keytool: signing request for {name}", env)
        self.sign(csr, cert, address)
        _run(["keytool", "-importcert", *common, "-alias", "ca", "-file", str(self.cert), "-noprompt"],
             f"keytool: importing the CA for {name}", env)
        _run(["keytool", "-importcert", *common, "-alias", name, "-file", str(cert), "-noprompt"],
             f"keytool: importing the signed certificate for {name}", env)
        os.chmod(store, 0o600)
        return store


@dataclass
class KafkaSecrets:
    """What the brokers need to know; all generated per cluster."""

    admin_password: str  # the brokers' own SCRAM user, for inter-broker traffic
    client_user: str
    client_password: str
    keystore_password: str


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


@dataclass
class SecureKafkaNode:
    """One combined broker+controller of a KRaft cluster on its own address.

    Clients and brokers talk SASL_SSL with SCRAM-SHA-512. The controller listener is SSL
    (encrypted; the brokers verify the controllers' certificates): SCRAM credentials live in the
    metadata log that the controllers themselves serve, so SCRAM cannot authenticate the quorum,
    and PLAINTEXT would leave the metadata (SCRAM salts and hashes included) readable on the wire.
    """

    node_id: int
    address: str
    voters: dict[int, str]  # node id -> address, every controller of the cluster
    workdir: Path
    launcher: Sequence[str] = ()
    replication: int = 3

    @property
    def bootstrap(self) -> str:
        return f"{self.address}:{KAFKA_PORT}"

    @property
    def properties_file(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(f"kafka{self.node_id}", self.workdir / "kafka.pid", self.workdir / "kafka.out")

    def create(self, ca: CertificateAuthority, secrets: KafkaSecrets, cluster_id: str) -> "SecureKafkaNode":
        """Write the config (0600), make the keystore and format the storage with both SCRAM users."""
        libs = install_kafka()
        self.workdir.mkdir(parents=True, exist_ok=True)
        keystore = ca.java_keystore(f"kafka{self.node_id}", self.address, secrets.keystore_password)
        settings = self._settings(ca, secrets, keystore)
        write_secret(self.properties_file, "".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.workdir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        # The SCRAM passwords for `format --add-scram` go in a 0600 @argfile: the java launcher
        # reads the arguments from it, and /proc/PID/cmdline shows only "@file".
        args = write_secret(self.workdir / "format.args", "\n".join([
            *KAFKA_JVM_OPTIONS, *self._log_options(), "-cp", f"{libs}/*", "kafka.tools.StorageTool",
            "format", "--cluster-id", cluster_id, "--config", str(self.properties_file),
            "--add-scram", f"{SCRAM_MECHANISM}=[name={KAFKA_ADMIN_USER},password={secrets.admin_password}]",
            "--add-scram", f"{SCRAM_MECHANISM}=[name={secrets.client_user},password={secrets.client_password}]",
        ]) + "\n")
        try:
            _run(["java", f"@{args}"], f"Kafka node {self.node_id}: formatting the storage", cwd=self.workdir)
        finally:
            args.unlink(missing_ok=True)
        return self

    def _settings(self, ca: CertificateAuthority, secrets: KafkaSecrets, keystore: Path) -> dict[str, str]:
        """The node's server.properties: its listeners, the quorum, SCRAM over SSL, replication."""
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{KAFKA_ADMIN_USER}" password="{secrets.admin_password}";')
        min_isr = str(min(2, self.replication))
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(f"{n}@{a}:{CONTROLLER_PORT}" for n, a in sorted(self.voters.items())),
            "listeners": f"SASL_SSL://{self.address}:{KAFKA_PORT},CONTROLLER://{self.address}:{CONTROLLER_PORT}",
            "advertised.listeners": f"SASL_SSL://{self.address}:{KAFKA_PORT}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.password": secrets.keystore_password,
            "ssl.key.password": secrets.keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(ca.cert),
            "ssl.endpoint.identification.algorithm": "https",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": min_isr,
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # A killed broker is fenced (dropped from every ISR, its partitions led elsewhere)
            # after this long without a heartbeat: 9 s by default, during which acks=all waits.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            "replica.lag.time.max.ms": "10000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.replica.fetchers": "1",
            "log.retention.hours": "24",
            "auto.create.topics.enable": "false",
        }

    def start(self) -> int:
        """Run the node (not waiting for it: the quorum forms only once most nodes run)."""
        if self.running():
            raise ServiceError(f"Kafka node {self.node_id} on {self.bootstrap} is already running")
        self.process.start([*self.launcher, "java", *KAFKA_JVM_OPTIONS, *self._log_options(),
                            "-cp", f"{install_kafka()}/*", "kafka.Kafka", str(self.properties_file)],
                           cwd=self.workdir)
        return self.pid()

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Until the node says it has started (it has joined the quorum and caught up)."""
        def started() -> bool:
            return self.log_file.exists() and "Kafka Server started" in self.log_file.read_text(errors="replace")

        wait_ready(self.process, started, timeout_s, f"Kafka node {self.node_id} on {self.bootstrap}", self.log_file)

    def pid(self) -> int:
        pid = self.process.pid()
        if pid is None:
            raise ServiceError(f"Kafka node {self.node_id} on {self.bootstrap} is not running")
        return pid

    def running(self) -> bool:
        return self.process.pid() is not None

    def kill(self) -> None:
        """SIGKILL, like a crashed host: no controlled shutdown, data dir kept for a restart."""
        self.process.stop(timeout_s=20.0, sig=signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same data; the next 'started' line is the new process's."""
        self.kill()
        self.log_file.rename(self.log_file.with_suffix(f".{len(list(self.workdir.glob('server.*')))}.log"))
        self.start()

    def stop(self) -> None:
        self.process.stop(timeout_s=20.0)

    def _log_options(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.workdir}"]


@dataclass
class SecurePostgres:
    """PostgreSQL 15 on one address that accepts only SSL connections with a scram-sha-256
    password (``hostssl`` lines only), from ``allowed_network``. Administration goes over the
    Unix socket in the work dir, as the server's own user (peer authentication).

    ``workdir`` must be enterable by the ``postgres`` user (not under a 0700 folder)."""

    address: str
    allowed_network: str
    workdir: Path
    launcher: Sequence[str] = ()
    user: str = "postgres"
    created: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("postgres", self.workdir / "postgres.pid", self.log_file)

    def url(self, user: str, password: str | None, database: str, ca_file: Path) -> str:
        """The client URL: verify-full checks the server's certificate against ``ca_file`` and its
        address against the certificate's subjectAltName."""
        auth = f"{user}:{password}" if password is not None else user
        return (f"postgresql://{auth}@{self.address}:{POSTGRES_PORT}/{database}"
                f"?sslmode=verify-full&sslrootcert={ca_file}")

    def create(self, ca: CertificateAuthority, superuser_password: str) -> "SecurePostgres":
        install_postgres()
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        shutil.chown(self.workdir, self.user, self.user)
        pwfile = write_secret(self.workdir / "superuser.pw", superuser_password + "\n", owner=self.user)
        try:
            self._as_server_user(["initdb", "-D", str(self.data_dir), "-U", "postgres", f"--pwfile={pwfile}",
                                  "--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync",
                                  "--encoding=UTF8", "--locale=C"], "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        key, cert = ca.server_pem("postgres", self.address, owner=self.user)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"""
# Written by services/cluster.py: a disposable cluster reached over SSL only.
listen_addresses = '{self.address}'
port = {POSTGRES_PORT}
unix_socket_directories = '{self.workdir}'
ssl = on
ssl_cert_file = '{cert}'
ssl_key_file = '{key}'
password_encryption = 'scram-sha-256'
fsync = off
full_page_writes = off
shared_buffers = 32MB
""")
        (self.data_dir / "pg_hba.conf").write_text(
            "# Only the server's own user over the socket; over TCP only SSL with a SCRAM password.\n"
            "local   all postgres peer\n"
            f"hostssl all all {self.allowed_network} scram-sha-256\n")
        return self

    def start(self, timeout_s: float = 60.0) -> int:
        self.process.start([*self.launcher, "runuser", "-u", self.user, "--", str(PG_BIN_DIR / "postgres"),
                            "-D", str(self.data_dir)], cwd=self.workdir)
        wait_ready(self.process, self._accepts_connections, timeout_s,
                   f"PostgreSQL on {self.address}:{POSTGRES_PORT}", self.log_file)
        return self.process.pid() or 0

    def create_database(self, owner: str, password: str, database: str) -> None:
        """A login role with a password and a database it owns; the SQL (password included)
        goes to psql on its standard input."""
        sql = (f"CREATE ROLE \"{owner}\" LOGIN PASSWORD '{password}';\n"
               f"CREATE DATABASE \"{database}\" OWNER \"{owner}\";\n")
        self._as_server_user(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.workdir),
                              "-p", str(POSTGRES_PORT), "-d", "postgres", "-f", "-"], "psql: creating the role",
                             stdin=sql)

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer...)."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            postmaster = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *children_of(postmaster)]

    def stop(self) -> None:
        self.process.stop(timeout_s=20.0, sig=signal.SIGINT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _accepts_connections(self) -> bool:
        return subprocess.run([str(PG_BIN_DIR / "pg_isready"), "-q", "-h", str(self.workdir),
                               "-p", str(POSTGRES_PORT), "-t", "2"], capture_output=True).returncode == 0

    def _as_server_user(self, argv: list[str], what: str, stdin: str | None = None) -> str:
        return _run(["runuser", "-u", self.user, "--", str(PG_BIN_DIR / argv[0]), *argv[1:]],
                    f"PostgreSQL: {what}", cwd=self.workdir, stdin=stdin)


__all__ = ["CertificateAuthority", "KafkaSecrets", "SecureKafkaNode", "SecurePostgres", "children_of",
           "cpu_seconds", "process_alive", "write_secret"]
