"""The compose stack under podman, for tests/integration/test_compose_stack.py.

Where no container registry can be reached, every image is built here: a Debian bookworm base
from ``mmdebstrap`` imported into podman, stand-ins for ``python:3.11-slim``, ``python:3.11`` (a C
compiler), ``postgres:15`` and ``apache/kafka`` built on it (``tests/compose/``), and the project's
own images built from the shipped Dockerfiles with ``BASE_IMAGE`` and ``BUILD_IMAGE`` pointing at
the stand-ins and pip reading wheels downloaded on the host. Images carry stable
``localhost/vectorai-test/*`` tags, so that their layers are reused by the next run; containers,
volumes and networks are the compose project's and ``down -v`` removes them.

podman 4.3 (Debian bookworm) runs here only with ``tests/compose/containers.conf`` (runc,
cgroupfs), and, as systemd is not PID 1, it does not schedule healthchecks: :meth:`wait_healthy`
runs each container's own healthcheck (``podman healthcheck run``) as systemd's timer would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

REPO = Path(__file__).resolve().parent.parent
TEST_DIR = REPO / "tests" / "compose"
CONTAINERS_CONF = TEST_DIR / "containers.conf"
OVERRIDE = "tests/compose/docker-compose.test.yml"
# Stable across runs and clones on one machine: wheels and the Debian root file system.
CACHE_DIR = Path(os.environ.get("VECTORAI_COMPOSE_CACHE", Path.home() / ".cache" / "vectorai-compose"))

DEBIAN_IMAGE = "localhost/vectorai-test/debian:bookworm"
PYTHON_IMAGE = "localhost/vectorai-test/python:3.11"
BUILD_IMAGE = "localhost/vectorai-test/python-build:3.11"  # and a C compiler: for python:3.11
STAND_INS = {  # image -> folder of tests/compose/ holding its Dockerfile
    "localhost/vectorai-test/postgres:15": "postgres",
    "localhost/vectorai-test/kafka:4.1.1": "kafka",
}
# The extras the worker image is built with in the test (tests/compose/docker-compose.test.yml).
WHEEL_EXTRAS = "train,kafka,postgres,scheduler"
# The dnsname CNI plugin: podman 4.3 on CNI (what apt installs beside Debian's
# containernetworking-plugins) gives a compose network no name resolution without it, and the
# Kafka container cannot reach its own controller at kafka:9093.
APT_PACKAGES = ("podman", "runc", "mmdebstrap", "uidmap", "golang-github-containernetworking-plugin-dnsname")
#: Where the plugins that resolve service names on a podman network live: CNI's dnsname, or
#: netavark's aardvark-dns.
NAME_RESOLVERS = ("/usr/lib/cni/dnsname", "/usr/libexec/cni/dnsname", "/usr/lib/podman/aardvark-dns",
                  "/usr/libexec/podman/aardvark-dns")


class EngineError(RuntimeError):
    """The container engine is missing or cannot run a container here."""


def engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 1200, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, and on failure raise with the tail of its output (builds are long)."""
    proc = subprocess.run(argv, cwd=cwd, env=env or engine_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def podman(*args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    return run(["podman", *args], check=check, timeout=timeout)


def install_engine() -> None:
    """Install podman, runc, mmdebstrap and a name resolver for podman's networks with apt when
    one is missing (CI's machine is new)."""
    if all(shutil.which(tool) for tool in ("podman", "runc", "mmdebstrap")) and any(
            Path(resolver).exists() for resolver in NAME_RESOLVERS):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise EngineError(f"{', '.join(APT_PACKAGES)} are needed; install them (apt-get as root)")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES]):
        proc = subprocess.run(argv, env=apt_env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise EngineError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def debian_base() -> None:
    """The Debian base image, made once per machine with mmdebstrap (apt, no registry)."""
    if image_exists(DEBIAN_IMAGE):
        return
    with tempfile.TemporaryDirectory(prefix="vectorai-rootfs-", dir=CACHE_DIR) as work:
        rootfs = Path(work) / "rootfs.tar"
        run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", str(rootfs)], timeout=900)
        podman("import", str(rootfs), DEBIAN_IMAGE)


def check_engine() -> None:
    """Raise EngineError unless podman runs a container here (with the base image)."""
    if os.geteuid() != 0:  # rootful podman: the worker's uid owns the bind mounts, apt installs
        raise EngineError("the compose test runs podman as root")
    install_engine()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        debian_base()
        podman("run", "--rm", "--network", "none", DEBIAN_IMAGE, "true", timeout=120)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise EngineError(f"podman cannot run a container here: {err}") from err


def wheels() -> Path:
    """Wheels for the images, downloaded on the host (pip inside a build may not reach an
    index): the versions of constraints.txt, kept until setup.py or constraints.txt change."""
    pins = hashlib.sha256((REPO / "constraints.txt").read_bytes() + (REPO / "setup.py").read_bytes())
    folder = CACHE_DIR / f"wheels-{pins.hexdigest()[:16]}"
    if (folder / ".complete").exists():
        return folder
    for old in CACHE_DIR.glob("wheels-*"):  # for pins that changed since
        shutil.rmtree(old, ignore_errors=True)
    folder.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "-c", str(REPO / "constraints.txt"), "-d", str(folder),
         f"{REPO}[{WHEEL_EXTRAS}]", "mlflow", "psycopg2-binary"], timeout=1800)
    (folder / ".complete").touch()
    return folder


def build_stand_ins(work: Path) -> None:
    """The stand-ins for python:3.11-slim, python:3.11, postgres:15 and apache/kafka (layers cached)."""
    podman("build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}",
           "-f", str(TEST_DIR / "python.Dockerfile"), "-t", PYTHON_IMAGE, str(TEST_DIR))
    podman("build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE}",
           "-f", str(TEST_DIR / "python-build.Dockerfile"), "-t", BUILD_IMAGE, str(TEST_DIR))
    for image, folder in STAND_INS.items():
        context = work / folder
        shutil.copytree(TEST_DIR / folder, context)
        if folder == "kafka":
            # The broker's jars as services/kafka.py fetches them for the other tests, and the
            # healthcheck's topic lister compiled against them (the JRE image has no javac).
            from services import kafka

            shutil.copytree(kafka.install(), context / "libs")
            run(["javac", "-cp", f"{context / 'libs'}/*", "-d", str(context / "classes"),
                 str(context / "ListTopics.java")], timeout=300)
        podman("build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={DEBIAN_IMAGE}",
               "-t", image, str(context))


def copy_checkout(dest: Path, wheel_dir: Path) -> None:
    """The repo's files as a clone has them (plus files not yet committed), and the wheels.

    The stack runs from this copy so that the worker's bind-mounted ./data and ./models are
    the test's, not the developer's."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "wheels").mkdir(exist_ok=True)
    for wheel in wheel_dir.glob("*.whl"):
        try:
            os.link(wheel, dest / "wheels" / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, dest / "wheels" / wheel.name)


@dataclass
class Stack:
    """One compose project made from the copy in ``root``, on free loopback ports."""

    root: Path
    project: str
    env: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "podman_compose", "--project-name", self.project,
                    "-f", "docker-compose.yml", "-f", OVERRIDE, *args],
                   cwd=self.root, env={**engine_env(), **self.env}, timeout=timeout, check=check)

    def services(self) -> dict[str, dict]:
        return yaml.safe_load((self.root / "docker-compose.yml").read_text(encoding="utf-8"))["services"]

    def container(self, service: str) -> str:
        names = podman("ps", "--all", "--format", "{{.Names}}",
                       "--filter", f"label=com.docker.compose.project={self.project}",
                       "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        if len(names) != 1:
            raise AssertionError(f"{service}: expected one container, found {names}")
        return names[0]

    def healthy(self, service: str) -> bool:
        """Run the service's own healthcheck once, as podman's timer would under systemd."""
        return podman("healthcheck", "run", self.container(service), check=False, timeout=120).returncode == 0

    def wait_healthy(self, services: Iterable[str], timeout_s: float = 300) -> None:
        pending = set(services)
        deadline = time.monotonic() + timeout_s
        while pending:
            pending = {service for service in pending if not self.healthy(service)}
            if pending and time.monotonic() > deadline:
                logs = {s: podman("logs", "--tail", "30", self.container(s), check=False).stdout[-3000:]
                        for s in pending}
                raise AssertionError(f"not healthy after {timeout_s:.0f} s: {sorted(pending)}\n"
                                     + json.dumps(logs, indent=1))
            if pending:
                time.sleep(2)

    def up_in_order(self, services: list[str]) -> None:
        """Start ``services`` as compose does: each once every service it depends on is healthy.

        podman-compose leaves depends_on conditions to podman >= 4.6, so the order is kept here,
        from the conditions written in docker-compose.yml."""
        depends = {name: dict(self.services()[name].get("depends_on") or {}) for name in services}
        started: set[str] = set()
        while len(started) < len(services):
            ready = [s for s in services if s not in started and set(depends[s]) <= started]
            if not ready:
                raise AssertionError(f"depends_on of {sorted(set(services) - started)} names services not started")
            self.compose("up", "--detach", "--no-deps", *ready)
            self.wait_healthy(ready)
            started.update(ready)

    def psql(self, database: str, query: str) -> list[list[str]]:
        out = podman("exec", self.container("postgres"), "psql", "--username", "vectorai", "--dbname", database,
                     "--no-align", "--tuples-only", "--field-separator", "|", "-v", "ON_ERROR_STOP=1",
                     "--command", query).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, pods, volumes and networks of this project still present."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": podman("ps", "--all", "--format", "{{.Names}}", "--filter", label).stdout.split(),
            # podman-compose puts the project's containers in a pod of its own.
            "pods": [p for p in podman("pod", "ls", "--format", "{{.Name}}").stdout.split() if self.project in p],
            "volumes": [v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
                        if v.startswith(f"{self.project}_")],
            "networks": [n for n in podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                         if n.startswith(f"{self.project}_")],
        }


STABLE_TAGS = (DEBIAN_IMAGE, PYTHON_IMAGE, BUILD_IMAGE, *STAND_INS,
               "localhost/vectorai-test/worker:cache", "localhost/vectorai-test/mlflow:cache")


def top_level_images() -> set[str]:
    """Ids of the images `podman images` lists (layers kept as build cache are not listed)."""
    return {image.removeprefix("sha256:") for image in podman("images", "--quiet", "--no-trunc").stdout.split()}


def stable_image_ids() -> set[str]:
    """Ids of the images the stable tags name now."""
    ids = set()
    for tag in STABLE_TAGS:
        proc = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        if proc.returncode == 0:
            ids.add(proc.stdout.strip().removeprefix("sha256:"))
    return ids
