"""Settings that become file names (PredictTask.run_at, the stream's topic and group) are checked:
a bad one fails in one line naming it, and nothing is ever written outside the data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_bad_config import fail


def files_outside_data(project) -> set[Path]:
    """Every file under the test's whole temporary tree except the project's data and models
    folders (the chain's upstream tasks, PromoteModel's decision among them, may write there
    before the bad setting is reached)."""
    top = project.root.parent
    kept = (project.data, project.root / "models")
    return {p for p in top.rglob("*") if p.is_file() and not any(folder in p.parents for folder in kept)}


# (An empty --run-at is Luigi's "not given": the default; tests/unit/test_file_names.py covers "".)
@pytest.mark.parametrize("run_at", ["../../../../etc/x", "a/b", ".hidden", "..", "x" * 101, "a b"])
def test_bad_run_at_fails_in_one_line_and_writes_nothing(project, run_at):
    before = files_outside_data(project)
    line = fail(project, "PredictTask", "--run-at", run_at)
    assert line.startswith(f"vectorai error: setting PredictTask.run_at: {run_at!r} cannot be part of a file name"), line
    assert files_outside_data(project) == before
    assert not list((project.data / "reports").glob("*.json"))
    # Nothing reached the database either: the check comes before any work.
    assert not (project.data / "predictions.sqlite").exists()


def test_run_at_with_a_time_and_offset_names_the_report(project):
    project.luigi("PredictTask", "--run-at", "2024-05-01T10:00+02:00")
    [report] = (project.data / "reports").glob("*.json")
    assert "-2024-05-01T10:00+02:00-" in report.name


@pytest.mark.parametrize("topic", ["x/../../y", "../outside", ".queue"])
def test_bad_topic_fails_in_one_line_and_writes_nothing(project, topic):
    before = files_outside_data(project)
    line = fail(project, "StreamData", "--stream-topic", topic)
    assert line.startswith(f"vectorai error: setting stream.topic: {topic!r} cannot be part of a file name"), line
    # PredictTask alone (another producer feeds the topic): the local queue rejects the name.
    line = fail(project, "PredictTask", "--require-stream", "false", "--stream-topic", topic)
    assert line.startswith(f"vectorai error: setting local.topic: {topic!r} is not a valid name"), line
    assert files_outside_data(project) == before
    assert not list((project.data / "stream").rglob("*")) and not list((project.data / "reports").rglob("*"))


def test_bad_consumer_group_fails_in_one_line(project):
    line = fail(project, "PredictTask", "--require-stream", "false", "--stream-group", "../g")
    assert line.startswith("vectorai error: setting local.group: '../g' is not a valid name"), line
