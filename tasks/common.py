"""Small pieces every task uses: stable output names and one-line failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import luigi


def params_hash(task: luigi.Task) -> str:
    """A short hash of the task's significant parameters: changing one changes the output path,
    so a new setting retrains instead of silently reusing an old model."""
    params = task.to_str_params(only_significant=True, only_public=True)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def write_json(target: luigi.LocalTarget, data: object) -> None:
    """Atomically write ``data`` as the task's JSON target."""
    with target.open("w") as handle:
        json.dump(data, handle, indent=2, default=str)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class _OneLineVectoraiErrors:
    """Logging filter: a VectoraiError already says which input is wrong and why, so Luigi's
    failure log shows that one line instead of a traceback. Other exceptions keep theirs."""

    def filter(self, record) -> bool:  # noqa: A003 - logging.Filter protocol
        from vectorai.errors import VectoraiError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, VectoraiError):
            record.msg = f"{record.getMessage()}\nvectorai error: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def install_error_reporting() -> None:
    import logging

    logger = logging.getLogger("luigi-interface")
    if not any(isinstance(f, _OneLineVectoraiErrors) for f in logger.filters):
        logger.addFilter(_OneLineVectoraiErrors())


class VectoraiTaskMixin:
    """``on_failure`` text for the scheduler: the error's one line rather than a traceback."""

    def on_failure(self, exception: BaseException) -> str:
        from vectorai.errors import VectoraiError

        if isinstance(exception, VectoraiError):
            return f"{type(exception).__name__}: {exception}"
        return super().on_failure(exception)  # type: ignore[misc]
