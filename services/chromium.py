"""The system Chromium that the browser tests drive headless through Playwright.

No browser is downloaded (Playwright's own builds come from a CDN the test machines cannot
reach): Debian's ``chromium`` package, installed with apt when it is missing, as PostgreSQL is.
``python -m services.chromium`` installs it and prints its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from services.common import ServiceError

#: Set to use another Chromium or Chrome binary.
PATH_ENV = "CHROMIUM_PATH"
_NAMES = ("chromium", "chromium-browser")


def find() -> Path | None:
    """The Chromium binary: $CHROMIUM_PATH, else the first of ``chromium``, ``chromium-browser`` on PATH."""
    given = os.environ.get(PATH_ENV)
    if given:
        return Path(given) if Path(given).is_file() else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def install() -> Path:
    """The Chromium binary, installed with apt-get when missing (as root)."""
    found = find()
    if found is not None:
        return found
    if os.environ.get(PATH_ENV):
        raise ServiceError(f"Chromium: ${PATH_ENV} is {os.environ[PATH_ENV]!r}, which is not a file")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError("Chromium is not installed; install the chromium package (apt-get install chromium) "
                           f"or set ${PATH_ENV}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ServiceError(f"Chromium: {' '.join(argv)} failed:\n{output}")
    found = find()
    if found is None:
        raise ServiceError("Chromium: apt-get installed the chromium package but no chromium binary is on PATH")
    return found


if __name__ == "__main__":
    try:
        print(install())
    except ServiceError as err:
        print(f"services.chromium: {err}", file=sys.stderr)
        sys.exit(1)
