"""A clone works: the README's demo runs in what ``git archive HEAD`` holds (a clone's files, not
this working tree's) and leaves only ignored files behind; the local services start from a
checkout in a private (0700) folder, as root and as a normal user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
#: The virtualenv this session runs in; the demo reuses it instead of installing another.
VENV = Path(sys.executable).parent.parent
#: Variables that would point a run at this session's services or config instead of the clone's own.
_FOREIGN_ENV = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "PUBSUB_EMULATOR_HOST", "MLFLOW_TRACKING_URI",
                "LUIGI_CONFIG_PATH", "VECTORAI_SERVICES_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"exit status {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


# --- the demo, in a clone ------------------------------------------------------------------------


def _clone_of_head(dest: Path) -> Path:
    """HEAD's files as ``git archive`` gives them, committed to a new repository of their own so
    ``git status`` there shows what a run leaves behind."""
    top = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO:
        _unavailable(f"{REPO} is not the top of a git checkout: {top.stderr.strip()}")
    dest.mkdir(parents=True)
    archive = subprocess.run(f"git -C {REPO} archive --format=tar HEAD | tar -x -C {dest}", shell=True,
                             capture_output=True, text=True)
    assert archive.returncode == 0, f"git archive HEAD | tar -x failed: {archive.stderr}"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    for argv in (["init", "-q"], ["add", "--all"], ["commit", "-q", "-m", "HEAD of the repository under test"]):
        proc = subprocess.run([*git, *argv], cwd=dest, capture_output=True, text=True)
        assert proc.returncode == 0, f"git {argv[0]} in the clone failed: {proc.stderr}"
    return dest


def _clone_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    # The venv's editable install points at the working tree; PYTHONPATH puts the clone's code first.
    return {**env, "PYTHONPATH": str(clone), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _make_demo(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``make demo`` with this session's venv; ``-o`` stops make from installing into it again
    (HEAD's files carry the commit's time, which may be newer than the venv's marker)."""
    installed = VENV / ".installed"
    return _run(["make", "demo", f"VENV={VENV}", "-o", str(installed)], clone, env, timeout=1200)


@pytest.mark.slow
@pytest.mark.system
def test_the_readme_demo_runs_in_a_fresh_clone(tmp_path):
    if not (VENV / "bin" / "luigi").exists() or shutil.which("make") is None:
        _unavailable(f"the demo needs make and the project's venv; {sys.executable} is not in one")
    clone = _clone_of_head(tmp_path / "clone")
    env = _clone_env(clone)
    where = _run([sys.executable, "-c", "import tasks, vectorai; print(tasks.__file__); print(vectorai.__file__)"],
                 clone, env)
    assert all(Path(p).is_relative_to(clone) for p in where.stdout.split()), \
        f"the demo would run the working tree's code, not the clone's:\n{_output(where)}"

    demo = _make_demo(clone, env)

    assert demo.returncode == 0, _output(demo)
    assert "predictions: 200 " in demo.stdout, _output(demo)
    assert "dead letters: 0 " in demo.stdout, _output(demo)
    left = _run(["git", "status", "--porcelain", "--untracked-files=all"], clone, env)
    assert left.stdout == "", f"the demo wrote files .gitignore does not cover:\n{left.stdout}"

    again = _make_demo(clone, env)  # README: "Running it again does no work: every target exists."
    assert again.returncode == 0, _output(again)
    assert "ran successfully" not in again.stdout + again.stderr, _output(again)
    assert "complete ones were encountered" in again.stdout + again.stderr, _output(again)
    assert "predictions: 200 " in again.stdout, _output(again)


# --- the services, from a private checkout ----------------------------------------------------------


@dataclass
class Account:
    """Who runs ``python -m services``: the session's own user, or a throwaway normal user."""

    name: str
    home: Path
    python: str
    runuser: bool  # run through ``runuser -u name --``

    def argv(self, *args: str) -> list[str]:
        command = [self.python, "-m", "services", *args]
        return ["runuser", "-u", self.name, "--", *command] if self.runuser else command


def _interpreter_for(user: str) -> str:
    """A Python the user can run. The services package needs only the standard library, and this
    session's interpreter may live in a folder the user cannot enter (a pyenv under /root)."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and subprocess.run(
                ["runuser", "-u", user, "--", candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
                capture_output=True).returncode == 0:
            return candidate
    _unavailable(f"no Python 3.10+ that user {user!r} may run (tried {sys.executable} and python3 on /usr/bin)")
    raise AssertionError("unreachable")


@pytest.fixture
def normal_user() -> Iterator[Account]:
    """A normal user with a 0700 home: a throwaway account when the session is root, else the session's user."""
    if os.geteuid() != 0:
        home = Path(tempfile.mkdtemp(prefix="vectorai-home-"))  # 0700, ours
        yield Account(pwd.getpwuid(os.getuid()).pw_name, home, sys.executable, runuser=False)
        shutil.rmtree(home, ignore_errors=True)
        return
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        _unavailable("useradd and runuser are needed to run the services as a normal user")
    name = f"vt{uuid.uuid4().hex[:10]}"
    home = Path(tempfile.mkdtemp(prefix="vectorai-home-"))
    created = subprocess.run(["useradd", "--home-dir", str(home), "--no-create-home", "--user-group",
                              "--shell", "/bin/sh", name], capture_output=True, text=True)
    if created.returncode != 0:
        shutil.rmtree(home)
        _unavailable(f"useradd {name} failed: {created.stderr.strip()}")
    try:
        shutil.chown(home, name, name)
        home.chmod(0o700)
        yield Account(name, home, _interpreter_for(name), runuser=True)
    finally:
        removed = subprocess.run(["userdel", name], capture_output=True, text=True)
        shutil.rmtree(home, ignore_errors=True)
        # After the test's own `services down`; a process left running makes userdel refuse.
        assert removed.returncode == 0, f"userdel {name} failed: {removed.stderr.strip()}"


@pytest.fixture
def root_user(tmp_path) -> Account:
    if os.geteuid() != 0:  # who runs the tests, not a missing service: a skip on CI as well
        pytest.skip("starting the services as root needs a root session")
    return Account("root", tmp_path / "home", sys.executable, runuser=False)


def _postgres_installed() -> None:
    """Install PostgreSQL (root only) before a normal user needs it; unavailable otherwise."""
    from services.common import ServiceError
    from services.postgres import install

    try:
        install()
    except ServiceError as err:
        _unavailable(f"PostgreSQL unavailable: {err}")


def _private_checkout(account: Account) -> Path:
    """The services package copied into ``<home>/checkout``, in a home only its owner may enter."""
    account.home.mkdir(exist_ok=True)
    checkout = account.home / "checkout"
    shutil.copytree(REPO / "services", checkout / "services", ignore=shutil.ignore_patterns("__pycache__"))
    if account.runuser:
        for path in (checkout, *checkout.rglob("*")):
            shutil.chown(path, account.name, account.name)
    account.home.chmod(0o700)
    return checkout


@pytest.mark.postgres
@pytest.mark.parametrize("who", ["root", "normal user"])
def test_services_up_and_down_from_a_checkout_in_a_0700_folder(who, request):
    """PostgreSQL is what broke (as root its server runs as ``postgres``, which could not enter the
    checkout); Kafka and the Pub/Sub emulator run as the invoking user, so they are not started here."""
    _postgres_installed()
    account: Account = request.getfixturevalue("root_user" if who == "root" else "normal_user")
    checkout = _private_checkout(account)
    # The checkout's own services package, as a user's shell would have it: no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in (*_FOREIGN_ENV, "PYTHONPATH")}
    env["HOME"] = str(account.home)
    try:
        up = _run(account.argv("up", "postgres"), checkout, env)
        assert up.returncode == 0, _output(up)
        exports = _run(account.argv("env"), checkout, env).stdout
        url = exports.strip().removeprefix("export DATABASE_URL=")
        assert url.startswith("postgresql://"), exports

        import psycopg2

        with psycopg2.connect(url, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("vectorai",)
        conn.close()
        # Where `down` will find it; private to the user the server runs as.
        workdir = Path(json.loads((checkout / ".services" / "postgresql.json").read_text())["workdir"])
        server_user = "postgres" if who == "root" else account.name
        assert pwd.getpwuid(workdir.stat().st_uid).pw_name == server_user
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700

        down = _run(account.argv("down", "postgres"), checkout, env)
        assert down.returncode == 0, _output(down)
        assert not workdir.exists(), f"`services down` left {workdir} behind"
        assert "postgres: stopped" in _run(account.argv("status"), checkout, env).stdout
    finally:
        _run(account.argv("down", "postgres"), checkout, env)


@pytest.mark.postgres
def test_a_cluster_dir_the_server_user_cannot_enter_is_refused_with_the_reason(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user (postgres)")
    _postgres_installed()
    from services.common import ServiceError
    from services.postgres import PostgresCluster

    tmp_path.chmod(0o700)
    with pytest.raises(ServiceError, match=r"'postgres', which cannot enter and write .*/cluster: a folder above"):
        PostgresCluster.create(tmp_path / "cluster")
