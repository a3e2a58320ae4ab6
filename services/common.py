"""Process and port plumbing shared by the service launchers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where launchers keep data dirs, logs, pid files and cached jars. Override for parallel runs.
STATE_DIR = Path(os.environ.get("VECTORAI_SERVICES_DIR", REPO_ROOT / ".services"))


class ServiceError(RuntimeError):
    """A service could not be installed, started or reached."""


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel picks it, so parallel runs cannot clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> None:
    """Poll ``check`` until it is true; raise ServiceError with the log's tail if it never is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a service that is still starting raises all sorts
            pass
        time.sleep(0.5)
    raise ServiceError(f"{what} did not become ready within {timeout_s:.0f}s"
                       f"{log_tail(log) if log is not None else ''}")


@dataclass
class ManagedProcess:
    """A background process with a pid file, so ``down`` in another shell can stop it."""

    name: str
    pid_file: Path
    log_file: Path

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None, user: str | None = None) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and process_alive(pid):
                time.sleep(0.2)
            if process_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pid_file.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited child (reaped here) or a zombie counts as gone."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def log_tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log file, formatted to append to an error message ('' if absent)."""
    if not log.exists():
        return ""
    text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return f"\n--- last lines of {log} ---\n{text}"


def wait_ready(process: ManagedProcess, check: Callable[[], bool], timeout_s: float, what: str,
               log: Path | None = None) -> None:
    """``wait_until`` that gives up at once, with the log's tail, if ``process`` exits while starting."""
    exited = False

    def ready_or_exited() -> bool:
        nonlocal exited
        pid = process.pid()
        if pid is None or not process_alive(pid):
            exited = True
            return True
        return check()

    log = log or process.log_file
    wait_until(ready_or_exited, timeout_s, what, log)
    if exited:
        process.pid_file.unlink(missing_ok=True)
        raise ServiceError(f"{what} exited while starting{log_tail(log)}")


class Server(Protocol):
    """What the Kafka and PostgreSQL launchers' classes offer."""

    address: str

    def start(self) -> str: ...
    def stop(self, graceful: bool = True) -> None: ...
    def restart(self) -> str: ...
    def running(self) -> bool: ...
    def remove(self) -> None: ...


class DefaultInstance:
    """The one instance of a service that ``python -m services`` manages, found by any shell
    through a small JSON file naming its work dir."""

    def __init__(self, name: str, create: Callable[[Path, int | None], Server],
                 load: Callable[[Path], Server], stub: Callable[[Path], Server],
                 workdir_parent: Path | None = STATE_DIR) -> None:
        """``workdir_parent``: where each start's fresh work dir is made; None is the system temp
        dir, for a server that runs as another user and may not be able to enter the checkout."""
        self.name = name
        self.instance_file = STATE_DIR / f"{name.lower()}.json"
        self._create, self._load, self._stub = create, load, stub
        self._workdir_parent = workdir_parent

    def current(self) -> Server | None:
        try:
            return self._load(Path(json.loads(self.instance_file.read_text())["workdir"]))
        except (OSError, ValueError, KeyError):
            return None

    def start(self, port: int | None = None) -> str:
        """Start on a fresh data dir and return the address; an instance already running is kept."""
        current = self.current()
        if current is not None and current.running():
            return current.address
        if current is not None:
            current.remove()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        if self._workdir_parent is None:  # shared temp dir: the prefix says whose it is
            workdir = Path(tempfile.mkdtemp(prefix=f"vectorai-{self.name.lower()}-"))
        else:
            self._workdir_parent.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f"{self.name.lower()}-", dir=self._workdir_parent))
        try:
            server = self._create(workdir, port)
            self.instance_file.write_text(json.dumps({"workdir": str(workdir)}))
            return server.start()
        except BaseException:
            self._stub(workdir).remove()  # the pid file lives in workdir, so this stops it too
            self.instance_file.unlink(missing_ok=True)
            raise

    def stop(self, remove_data: bool = False) -> None:
        """Stop it; keep its data for ``restart()`` unless ``remove_data``."""
        current = self.current()
        if current is None:
            return
        if remove_data:
            current.remove()
            self.instance_file.unlink(missing_ok=True)
        else:
            current.stop()

    def restart(self) -> str:
        """Start it again on the same data dir and port."""
        current = self.current()
        if current is None:
            raise ServiceError(f"{self.name}: nothing to restart; run start() first")
        return current.restart()

    def status(self) -> str | None:
        """Its address while it runs, else None."""
        current = self.current()
        return current.address if current is not None and current.running() else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and ')'), or
    None when the process is gone: ``fields[0]`` is stat(5)'s field 3 (state)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (one level), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: Sequence[int], reaped_children: bool = False) -> float:
    """User + system CPU seconds that ``pids`` have used so far (all their threads; gone ones
    count 0), from /proc/PID/stat. ``reaped_children`` adds what their children that already
    exited and were waited for used (a PostgreSQL backend that ended counts to the postmaster)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: stat(5) fields 14 and 15
        if reaped_children:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")
