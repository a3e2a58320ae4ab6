"""``python -m services up [kafka] [postgres] [pubsub] | down [...] | status | env``.

``up`` starts the named services (all available ones by default) and records their addresses in
``STATE_DIR/services.json``; ``eval "$(python -m services env)"`` exports them for the pipeline
and the tests; ``down`` stops them and deletes their data.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import shlex
import sys
import time
from types import ModuleType

from services.common import STATE_DIR, ServiceError

STATE_FILE = STATE_DIR / "services.json"

#: service name -> (launcher module, environment variable its address goes in)
SERVICES = {
    "kafka": ("services.kafka", "KAFKA_BOOTSTRAP_SERVERS"),
    "postgres": ("services.postgres", "DATABASE_URL"),
    "pubsub": ("services.pubsub", "PUBSUB_EMULATOR_HOST"),
}


def _launcher(name: str) -> ModuleType | None:
    """The launcher module, or None where it does not exist (yet)."""
    module_name = SERVICES[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise


def _read_state() -> dict[str, str]:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state: dict[str, str]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if state:
        STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    else:
        STATE_FILE.unlink(missing_ok=True)


def up(names: list[str]) -> int:
    explicit = bool(names)
    state = _read_state()
    failed = False
    for name in names or list(SERVICES):
        launcher = _launcher(name)
        if launcher is None:
            if explicit:
                print(f"{name}: no launcher (services/{name}.py is missing)", file=sys.stderr)
                failed = True
            continue
        started = time.monotonic()
        try:
            address = launcher.start()
        except ServiceError as err:
            print(f"{name}: {err}", file=sys.stderr)
            failed = True
            continue
        state[name] = address
        _write_state(state)
        print(f"{name}: {address} (ready in {time.monotonic() - started:.1f}s)")
    return 1 if failed else 0


def down(names: list[str]) -> int:
    state = _read_state()
    for name in names or list(SERVICES):
        launcher = _launcher(name)
        if launcher is not None:
            if "remove_data" in inspect.signature(launcher.stop).parameters:
                launcher.stop(remove_data=True)
            else:  # a launcher that keeps no data between runs
                launcher.stop()
            print(f"{name}: stopped")
        state.pop(name, None)
    _write_state(state)
    return 0


def status() -> int:
    state = _read_state()
    for name in SERVICES:
        launcher = _launcher(name)
        if launcher is None:
            print(f"{name}: no launcher")
            continue
        probe = getattr(launcher, "status", None) or getattr(launcher, "host", None)
        running = probe() if probe is not None else state.get(name)
        print(f"{name}: {'running at ' + running if running else 'stopped'}")
    return 0


def env() -> int:
    state = _read_state()
    for name, (_, variable) in SERVICES.items():
        if name in state:
            print(f"export {variable}={shlex.quote(state[name])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("up", "down"):
        sub = commands.add_parser(command, help=f"{command} the named services (default: all)")
        sub.add_argument("names", nargs="*", metavar="SERVICE", help=", ".join(SERVICES))
    commands.add_parser("status", help="say which services are running")
    commands.add_parser("env", help="print export lines for the running services")
    args = parser.parse_args(argv)
    unknown = [name for name in getattr(args, "names", []) if name not in SERVICES]
    if unknown:
        parser.error(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICES)}")
    if args.command == "up":
        return up(args.names)
    if args.command == "down":
        return down(args.names)
    return status() if args.command == "status" else env()


if __name__ == "__main__":
    sys.exit(main())
