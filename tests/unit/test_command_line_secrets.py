"""No secret comes in on a command line: every URL a command takes (each luigi setting or task
parameter that is a URL or an address, the options of ``vectorai-results`` and its ``serve``) is
refused when it holds a password, in one line saying where it belongs, before anything connects.
The same URL in a config file or the environment is used as before."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import luigi
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import Register

import tasks  # noqa: F401 - registers every task and config section
from tasks.params import RefuseSecrets, UrlParameter
from vectorai.redact import command_line_refusal

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "Hunter2-s3cret"
#: What names a URL or an address, in a parameter's name or its description.
_URL_NAME = re.compile(r"(^|_)(url|uri|host|servers?|endpoint|address)$")
_URL_WORDS = re.compile(r"\b(URL|URI|host:port|address)\b")


def our_parameters() -> list[tuple[str, str, luigi.Parameter]]:
    """(section, name, parameter) for every parameter of this project's tasks and config sections."""
    found = []
    for task_name, _, name, param in Register.get_all_params():
        if Register.get_task_cls(task_name).__module__.startswith("tasks."):
            found.append((task_name, name, param))
    return found


def url_parameters() -> list[tuple[str, str, luigi.Parameter]]:
    return [(section, name, p) for section, name, p in our_parameters() if isinstance(p, UrlParameter)]


def test_every_setting_that_takes_a_url_or_an_address_is_a_url_parameter():
    plain = luigi.Parameter, luigi.OptionalParameter
    missed = [f"[{section}] {name}" for section, name, param in our_parameters()
              if type(param) in plain and (_URL_NAME.search(name) or _URL_WORDS.search(param.description or ""))]
    assert not missed, f"these take a URL but are not UrlParameter, so a password on argv is not refused: {missed}"
    names = {f"{section}.{name}" for section, name, _ in url_parameters()}
    assert {"database.url", "mlflow.tracking_uri", "PredictTask.model_uri"} <= names, names


def parse(*argv: str) -> tuple[int | None, str, CmdlineParser | None]:
    """Luigi's own command-line parsing of ``argv`` (as ``luigi --module tasks ...``): the exit
    status it ended with (None when it did not), its stderr, and the parser."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return None, err.getvalue(), CmdlineParser(["--module", "tasks", *argv])
        except SystemExit as exit_:
            return int(exit_.code or 0), err.getvalue(), None


@pytest.mark.parametrize("section,name", [(s, n) for s, n, _ in url_parameters()])
def test_every_url_parameter_refuses_a_password_on_luigi_s_command_line(section, name):
    flag = f"--{section}-{name}".replace("_", "-")
    status, stderr, _ = parse("PredictTask", flag, f"http://app:{PASSWORD}@127.0.0.1:1/x")
    [line] = stderr.splitlines()
    assert status == 2 and f"{flag} must not contain a password" in line and "config file only you can read" in line
    assert PASSWORD not in stderr
    # The same URL without the password is taken as it is.
    status, _, parser = parse("PredictTask", flag, "http://app@127.0.0.1:1/x")
    assert status is None and getattr(parser.known_args, f"{section}_{name}") == "http://app@127.0.0.1:1/x"


def test_the_root_task_s_own_flag_is_checked_too():
    status, stderr, _ = parse("PredictTask", "--model-uri", f"models:/m@champion?token={PASSWORD}")
    assert status == 2 and stderr.startswith(f"{Path(sys.argv[0]).name}: --model-uri must not contain a password")
    assert PASSWORD not in stderr
    status, _, parser = parse("PredictTask", "--model-uri", "models:/m@champion")
    assert status is None and parser.known_args.model_uri == "models:/m@champion"


_PASSWORDS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=6, max_size=30)
_USERS = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), max_size=10)


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["postgresql", "http", "https", "mysql", "sqlite"]), user=_USERS,
       password=_PASSWORDS, host=st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
       path=st.from_regex(r"(/[A-Za-z0-9._-]{0,12}){0,3}", fullmatch=True))
def test_any_url_with_a_password_is_refused_without_showing_it(scheme, user, password, host, path):
    where = "put it in the environment"
    assume(password not in command_line_refusal("--url", where) and password not in "argparse-prog: ")
    parser = argparse.ArgumentParser(prog="argparse-prog")
    parser.add_argument("--url", action=RefuseSecrets, where=where)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--url", f"{scheme}://{user}:{password}@{host}{path}"])
    assert exit_.value.code == 2
    assert err.getvalue() == f"argparse-prog: {command_line_refusal('--url', where)}\n"
    # Without the password it is stored as given.
    plain = f"{scheme}://{user}@{host}{path}" if user else f"{scheme}://{host}{path}"
    assert parser.parse_args(["--url", plain]).url == plain


# --- the real commands --------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A loopback port that accepts connections but never answers: what connected to it stays in
    its queue, so a test can tell whether a command got as far as connecting."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}", sock


def connected(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        sock.accept()[0].close()
        return True
    except TimeoutError:
        return False


def run(tmp_path: Path, *argv: str, env: dict[str, str] | None = None, cfg: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "luigi.cfg").write_text(cfg)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD")}
    environment.update({"PYTHONPATH": str(REPO), "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg"), **(env or {})})
    return subprocess.run([str(part) for part in argv], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=120)


LUIGI = (BIN / "luigi", "--module", "tasks", "PredictTask", "--local-scheduler")
RESULTS = (BIN / "vectorai-results",)
SERVE = (BIN / "vectorai-results", "serve", "--port", "0")
COMMANDS = {
    "luigi --database-url": (LUIGI, "--database-url", "postgresql://app:{pw}@{addr}/predictions", "~/.pgpass"),
    "luigi --mlflow-tracking-uri": (LUIGI, "--mlflow-tracking-uri", "http://alice:{pw}@{addr}",
                                    "$MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD"),
    "luigi --model-uri": (LUIGI, "--model-uri", "models:/m@champion?password={pw}", "[PredictTask] model_uri"),
    "luigi --kafka-bootstrap-servers": (LUIGI, "--kafka-bootstrap-servers", "kafka://app:{pw}@{addr}",
                                        "sasl_password_env"),
    "vectorai-results --database-url": (RESULTS, "--database-url", "postgresql://app:{pw}@{addr}/p", "$DATABASE_URL"),
    "serve --database-url": (SERVE, "--database-url", "postgresql://app@{addr}/p?password={pw}", "$DATABASE_URL"),
    "serve --luigid-url": (SERVE, "--luigid-url", "http://admin:{pw}@{addr}", "without user and password"),
    "serve --mlflow-url": (SERVE, "--mlflow-url", "http://admin:{pw}@{addr}", "without user and password"),
}


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_a_command_refuses_a_password_in_one_line_before_connecting(tmp_path, listener, case):
    command, flag, url, where = COMMANDS[case]
    address, sock = listener
    proc = run(tmp_path, *command, flag, url.format(pw=PASSWORD, addr=address))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and PASSWORD not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{flag} must not contain a password" in line and where in line, line
    assert not connected(sock)


def test_the_same_url_in_a_config_file_or_the_environment_is_used(tmp_path, listener):
    address, sock = listener
    url = f"postgresql://app:{PASSWORD}@{address}/predictions"
    cfg = f"[database]\nurl = {url}\nconnect_timeout_s = 1\n"
    shown = f"database postgresql://app:***@{address}/predictions"
    for proc in (run(tmp_path, *RESULTS, cfg=cfg),
                 run(tmp_path, *RESULTS, env={"DATABASE_URL": url}, cfg="[database]\nconnect_timeout_s = 1\n"),
                 run(tmp_path, BIN / "luigi", "--module", "tasks", "ReviewedData", "--local-scheduler", cfg=cfg)):
        output = proc.stdout + proc.stderr
        assert shown in output and "must not contain a password" not in output, output[-2000:]
        assert PASSWORD not in output
        assert connected(sock)  # it went as far as the database (which never answered)


#: Every console script (setup.py) and subcommand, as ``vectorai-results serve --help`` is run.
SCRIPTS = [("vectorai-results",), ("vectorai-results", "serve"), ("vectorai-register",), ("vectorai-download",)]


def test_every_url_option_of_every_console_script_refuses_a_password(tmp_path, listener):
    """Whatever option a script grows that takes a URL (named --...-url or --...-uri) is checked."""
    address, sock = listener
    checked = []
    for script in SCRIPTS:
        usage = run(tmp_path, BIN / script[0], *script[1:], "--help").stdout
        for option in sorted(set(re.findall(r"--[a-z-]*(?:url|uri)\b", usage))):
            proc = run(tmp_path, BIN / script[0], *script[1:], option, f"http://admin:{PASSWORD}@{address}/x")
            assert proc.returncode == 2 and "must not contain a password" in proc.stderr, (script, option, proc)
            assert PASSWORD not in proc.stdout + proc.stderr
            checked.append(f"{' '.join(script)} {option}")
    assert not connected(sock)
    assert {"vectorai-results --database-url", "vectorai-results serve --luigid-url"} <= set(checked), checked
