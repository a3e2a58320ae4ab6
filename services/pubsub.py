"""Google's Pub/Sub emulator (Java, from the Cloud SDK) on a loopback port, for tests and demos.

Clients reach it by setting ``PUBSUB_EMULATOR_HOST`` to the ``host:port`` that ``start`` returns
(or by passing it as the transport's ``emulator_host``); no credentials are needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.common import (REPO_ROOT, STATE_DIR, ManagedProcess, ServiceError, free_port, log_tail, port_open,
                             process_alive, wait_until)

#: Where the Cloud SDK's apt package (and ``gcloud components install``) puts the launcher script.
EMULATOR = Path(os.environ.get(
    "PUBSUB_EMULATOR_BIN",
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
))
STATE = STATE_DIR / "pubsub"
PROCESS = ManagedProcess("pubsub-emulator", STATE / "emulator.pid", STATE / "emulator.log")
_PORT_FILE = STATE / "port"
_DATA_DIR = STATE / "data"
HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0


def start(port: int | None = None, timeout_s: float = START_TIMEOUT_S) -> str:
    """Start the emulator (or reuse the one this state dir already runs); return ``host:port``
    once it accepts connections."""
    running = host()
    if running is not None:
        return running
    _check_installed()
    port = port or free_port()
    # A fresh data dir and log per start, so old topics and an old "Server started" line
    # cannot make a new emulator look ready.
    shutil.rmtree(_DATA_DIR, ignore_errors=True)
    _DATA_DIR.mkdir(parents=True, exist_ok=True)
    PROCESS.log_file.unlink(missing_ok=True)
    pid = PROCESS.start([str(EMULATOR), f"--host={HOST}", f"--port={port}", f"--data-dir={_DATA_DIR}"])
    banner = f"Server started, listening on {port}"

    def ready() -> bool:
        # Stop polling early if the JVM died (port taken, bad Java); the log tail then says why.
        if not process_alive(pid):
            return True
        return banner in PROCESS.log_file.read_text(errors="replace") and port_open(port, HOST)

    try:
        wait_until(ready, timeout_s, f"Pub/Sub emulator on {HOST}:{port}", PROCESS.log_file)
        if not process_alive(pid):
            raise ServiceError(f"Pub/Sub emulator exited during start-up{log_tail(PROCESS.log_file)}")
    except ServiceError:
        stop()
        raise
    _PORT_FILE.write_text(str(port))
    return f"{HOST}:{port}"


def host() -> str | None:
    """``host:port`` of the emulator started from this state dir, or None when none runs."""
    if PROCESS.pid() is None or not _PORT_FILE.exists():
        return None
    port = int(_PORT_FILE.read_text())
    return f"{HOST}:{port}" if port_open(port, HOST) else None


def stop() -> None:
    """Stop the emulator and drop its data (topics and messages live only as long as it does)."""
    PROCESS.stop()
    _PORT_FILE.unlink(missing_ok=True)
    shutil.rmtree(_DATA_DIR, ignore_errors=True)


def _check_installed() -> None:
    if not EMULATOR.is_file():
        raise ServiceError(
            f"the Pub/Sub emulator is not installed: looked for {EMULATOR} (set PUBSUB_EMULATOR_BIN "
            "to use another path). Install it with `apt-get install google-cloud-cli-pubsub-emulator` "
            "from Google's Cloud SDK apt repository, or `gcloud components install pubsub-emulator`; "
            "or point PUBSUB_EMULATOR_HOST at an emulator that is already running."
        )
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServiceError("the Pub/Sub emulator needs Java 8 or later: no `java` on PATH and no JAVA_HOME")


@dataclass
class PrivateEmulator:
    """An emulator with a state dir of its own (``services.private``). The functions above keep
    their state in module globals, so this one runs ``python -m services`` in a subprocess
    pointed at ``workdir``."""

    workdir: Path
    address: str = ""

    @classmethod
    def create(cls, workdir: Path) -> "PrivateEmulator":
        return cls(workdir)

    def start(self) -> str:
        started = self._services("up")
        if started.returncode != 0:
            raise ServiceError((started.stderr.strip() or "python -m services up pubsub failed").splitlines()[-1])
        self.address = json.loads((self.workdir / "services.json").read_text())["pubsub"]
        return self.address

    def stop(self, graceful: bool = True) -> None:
        """Stop it; an emulator keeps no data between runs, so ``graceful`` changes nothing."""
        self._services("down")

    def restart(self) -> str:
        self.stop()
        return self.start()

    def running(self) -> bool:
        host, _, port = self.address.rpartition(":")
        return bool(self.address) and port_open(int(port), host)

    def remove(self) -> None:
        """Stop it and delete its state dir."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _services(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services", command, "pubsub"], cwd=REPO_ROOT,
                              env={**os.environ, "VECTORAI_SERVICES_DIR": str(self.workdir)},
                              capture_output=True, text=True)
