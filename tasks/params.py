"""Command-line values that may carry a secret: one check for every URL a command takes.

A command line is visible to every user of the machine (``ps``, ``/proc/*/cmdline``) and stays
in shell history, so a URL holding a password is refused there, in one line that says where it
belongs, before anything connects. The same value in a config file or the environment is used
as it is: this check is on argv only.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import luigi

from vectorai.redact import command_line_refusal, holds_secret

#: Where each kind of secret belongs instead of a command line.
DATABASE_URL_HOME = ("put the URL in $DATABASE_URL, or in [database] url of a config file only you can read, "
                     "or leave the password out and put it in ~/.pgpass")
MLFLOW_URI_HOME = ("put the URI in $MLFLOW_TRACKING_URI, or in [mlflow] tracking_uri of a config file only you "
                   "can read, or leave the user and password out and put them in $MLFLOW_TRACKING_USERNAME and "
                   "$MLFLOW_TRACKING_PASSWORD")
#: A link the results page shows holds no password: every visitor would read it.
LINK_HOME = ("give the address without user and password: the page shows the link to every visitor, and the "
             "browser asks for the credentials itself")
KAFKA_HOME = ("give host:port only, and the SASL user in [kafka] sasl_username of a config file only you can read; "
              "the password goes in the environment variable that [kafka] sasl_password_env names")


def config_home(section: str | None, name: str) -> str:
    """Where a setting with no environment variable of its own keeps a secret."""
    key = f"[{section}] {name}" if section else name
    return f"put it in {key} of a config file only you can read"


class RefuseSecrets(argparse.Action):
    """argparse's ``store``, except that a value holding a password ends the command with one
    line on stderr (exit status 2, as argparse's own usage errors) naming the option and
    ``where`` the secret belongs."""

    def __init__(self, option_strings: Sequence[str], dest: str, where: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.where = where or config_home(None, dest)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if isinstance(values, str) and holds_secret(values):
            parser.exit(2, f"{parser.prog}: {command_line_refusal(option_string or self.dest, self.where)}\n")
        setattr(namespace, self.dest, values)


class UrlParameter(luigi.Parameter):
    """A setting that takes a URL (or an address): read from luigi.cfg, the environment or the
    command line like any parameter, but refused on the command line when it holds a password.

    Luigi builds its command line from each parameter's ``_parser_kwargs``; the action given
    there runs for the global flag (``--database-url``) and the root task's own flag alike."""

    def __init__(self, *args: Any, secret_home: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secret_home = secret_home

    def _parser_kwargs(self, param_name: str, task_name: str | None = None) -> dict[str, Any]:  # type: ignore[override]
        kwargs = super()._parser_kwargs(param_name, task_name)
        return {**kwargs, "action": RefuseSecrets, "where": self.secret_home or config_home(task_name, param_name)}
