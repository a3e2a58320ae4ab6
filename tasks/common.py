"""Small pieces every task uses: stable output names, safe file names, one-line failures with
no secret in them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import luigi

from vectorai.training import TrainConfig

#: What a setting may hold when it becomes part of a file name: no separator, no leading dot
#: (so never ``.`` or ``..``), short enough for any file system's name limit with the rest of
#: the name around it.
_FILE_NAME_PART = re.compile(r"[A-Za-z0-9_:+-][A-Za-z0-9._:+-]{0,99}")


#: Parameters added after outputs were first named, with their defaults: at the default they are
#: left out of the hash, so every model named before keeps its name and is not retrained.
_ADDED_LATER = {"extra_train": "", "reviewed_weight": str(TrainConfig.reviewed_weight)}


def params_hash(task: luigi.Task) -> str:
    """A short hash of the task's significant parameters: changing one changes the output path,
    so a new setting retrains instead of silently reusing an old model."""
    params = {name: value for name, value in task.to_str_params(only_significant=True, only_public=True).items()
              if _ADDED_LATER.get(name, value + "x") != value}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def check_name_part(setting: str, value: str) -> str:
    """``value``, when it can safely be part of a file name; else a one-line ConfigError."""
    from vectorai.errors import ConfigError

    if not _FILE_NAME_PART.fullmatch(value) or ".." in value:
        raise ConfigError(setting, f"{value!r} cannot be part of a file name; use 1-100 letters, digits and "
                          f". _ - : + (not starting with a dot, no '..')")
    return value


def name_part(value: str) -> str:
    """``value`` for an output name, or a stand-in when it is not safe (see check_name_part).

    For ``output()``, which must not raise (Luigi logs an error while it checks completeness as
    a traceback) yet must never point outside the data folder; ``run()`` then fails with
    check_name_part's one line, so the stand-in is never written."""
    if _FILE_NAME_PART.fullmatch(value) and ".." not in value:
        return value
    return "invalid-" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def inside(root: Path, path: Path, setting: str) -> Path:
    """``path``, after checking that it stays inside ``root`` once ``..`` is resolved.

    Lexical on purpose: a symbolic link the user made inside the data folder (reports/ on
    another disk) is theirs to make, while a name from a setting must not climb out of it."""
    import os

    from vectorai.errors import ConfigError

    resolved, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if resolved != base and base not in resolved.parents:
        raise ConfigError(setting, f"{path} is outside the data folder {base}")
    return path


def registry_resources(name: str) -> dict[str, int]:
    """A task's Luigi ``resources`` while it registers a version of ``name`` or moves its
    aliases: one unit of a resource named after the registered model and its store. luigid lends
    a resource that its ``[resources]`` section does not declare once at a time (its default
    count is 1), so one such task runs at a time across every worker and host of that scheduler;
    the lock file in the model cache (vectorai.registry.promotion) covers ``--local-scheduler``."""
    from tasks.config import mlflow

    # The store as a short hash: the name is shown on luigid's resources page.
    store = hashlib.sha256(mlflow().store_identity().encode()).hexdigest()[:8]
    return {f"vectorai-registry-{name}-{store}": 1}


def write_json(target: luigi.LocalTarget, data: object) -> None:
    """Atomically write ``data`` as the task's JSON target."""
    with target.open("w") as handle:
        json.dump(data, handle, indent=2, default=str)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def configured_secrets() -> list[str]:
    """The passwords in the configured database URL and MLflow URI and the Kafka SASL password:
    what no failure text may show, whichever library put it there."""
    import os

    from tasks.config import database, kafka, mlflow
    from vectorai.redact import url_secrets

    try:
        secrets = url_secrets(database().resolved_url()) + url_secrets(mlflow().resolved_uri())
        sasl = os.environ.get(kafka().sasl_password_env, "")
    except Exception:  # noqa: BLE001 - a broken setting must not hide the failure being reported
        return []
    return secrets + ([sasl] if sasl else [])


def scrub(text: str, keep_newlines: bool = False) -> str:
    """``text`` for a log or the scheduler, with configured secrets and URL passwords masked and
    control characters escaped (a message's id may hold them); ``keep_newlines`` for a traceback."""
    from vectorai.printable import printable
    from vectorai.redact import mask_text

    return printable(mask_text(text, configured_secrets()), keep_newlines)


class _OneLineVectoraiErrors:
    """Logging filter: a VectoraiError already says which input is wrong and why, so Luigi's
    failure log shows that one line instead of a traceback. Other exceptions keep theirs, with
    any secret masked: a driver's message may quote the URL it was given."""

    def filter(self, record) -> bool:  # noqa: A003 - logging.Filter protocol
        import logging

        from vectorai.errors import VectoraiError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, VectoraiError):
            record.msg = f"{record.getMessage()}\nvectorai error: {scrub(str(exc))}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        elif exc is not None:
            # The formatter prints exc_text as it is when set.
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), keep_newlines=True)
        return True


def install_error_reporting() -> None:
    import logging

    from vectorai.printable import escape_log_records

    escape_log_records()
    logger = logging.getLogger("luigi-interface")
    if not any(isinstance(f, _OneLineVectoraiErrors) for f in logger.filters):
        logger.addFilter(_OneLineVectoraiErrors())


class VectoraiTaskMixin:
    """``on_failure`` text for the scheduler: the error's one line rather than a traceback."""

    def on_failure(self, exception: BaseException) -> str:
        from vectorai.errors import VectoraiError

        if isinstance(exception, VectoraiError):
            return scrub(f"{type(exception).__name__}: {exception}")
        return scrub(super().on_failure(exception), keep_newlines=True)  # type: ignore[misc]
