"""docs/configuration-reference.md is generated from the code (tasks.config_reference): it must be
what the generator renders today, and it must never show a configured value."""

from __future__ import annotations

from pathlib import Path

import luigi
import pytest
from luigi.parameter import ParameterVisibility

from tasks.config_reference import COMMAND, config_sections, describe_parameter, render, task_sections

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration-reference.md"
SECRET = "hunter2-not-in-the-docs"


def test_committed_reference_is_what_the_code_generates():
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert committed == render(), (
        f"{REFERENCE.name} is out of date with the luigi.Config classes and task parameters; "
        f"regenerate it with `{COMMAND}` (from the repository root) and commit it")


def test_every_setting_has_a_description_and_a_default_column():
    sections = task_sections() + config_sections()
    names = {section.name for section in sections}
    assert {"SplitData", "TrainModel", "PredictTask", "paths", "stream", "kafka", "database"} <= names
    for section in sections:
        for setting in section.settings:
            assert setting.description, f"[{section.name}] {setting.name} has no description="
            assert setting.default, f"[{section.name}] {setting.name} has no default column"


def test_an_inherited_parameter_is_listed_once_under_its_owner():
    listed = [(section.name, setting.name) for section in task_sections() for setting in section.settings]
    assert ("SplitData", "dataset") in listed and ("TrainModel", "dataset") not in listed
    assert ("PredictTask", "epochs") not in listed


@pytest.fixture
def configured_secrets(monkeypatch):
    """luigi.cfg values and environment variables holding a password, removed afterwards."""
    for env in ("DATABASE_URL", "KAFKA_SASL_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(env, f"postgresql://user:{SECRET}@db/vectorai")
    config = luigi.configuration.get_config()
    added_sections, values = [], {("database", "url"): f"postgresql://user:{SECRET}@db/x",
                                  ("SplitData", "dataset"): SECRET, ("kafka", "sasl_username"): SECRET}
    for (section, key), value in values.items():
        if not config.has_section(section):
            config.add_section(section)
            added_sections.append(section)
        previous = config.get(section, key) if config.has_option(section, key) else None
        config.set(section, key, value)
        values[(section, key)] = previous
    yield
    for (section, key), previous in values.items():
        if previous is None:
            config.remove_option(section, key)
        else:
            config.set(section, key, previous)
    for section in added_sections:
        config.remove_section(section)


def test_the_reference_shows_code_defaults_never_configured_values(configured_secrets):
    text = render()
    assert SECRET not in text
    assert "| `dataset` | `mnist-sample` |" in text


def test_sensitive_and_private_parameters_show_no_default():
    secret = luigi.Parameter(default=SECRET, description="A password")
    hidden = luigi.Parameter(default=SECRET, description="x", visibility=ParameterVisibility.HIDDEN)
    private = luigi.Parameter(default=SECRET, description="x", visibility=ParameterVisibility.PRIVATE)
    env_name = luigi.Parameter(default="KAFKA_SASL_PASSWORD", description="Variable holding the password")

    assert SECRET not in describe_parameter("s", "sasl_password", secret, "--s-sasl-password").default
    assert SECRET not in describe_parameter("s", "token", luigi.Parameter(default=SECRET), "--s-token").default
    assert SECRET not in describe_parameter("s", "url", hidden, "--s-url").default
    assert describe_parameter("s", "url", private, "--s-url") is None
    assert describe_parameter("s", "sasl_password_env", env_name, "--x").default == "`KAFKA_SASL_PASSWORD`"


def test_markdown_stays_in_its_table_cell():
    param = luigi.Parameter(default="a|b", description="<data_dir>/x | y, ``code`` at 100%%")
    row = describe_parameter("s", "k", param, "--s-k")
    assert row.description == "&lt;data_dir&gt;/x \\| y, `code` at 100%"
    assert row.default == "`a\\|b`"
