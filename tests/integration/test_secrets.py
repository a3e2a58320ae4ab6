"""A password in the database URL or the MLflow URI, in any form Peewee and MLflow accept, is
never printed: not in errors, run reports, ``vectorai-results``, nor luigid's failure text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures_luigid import api
from vectorai.db import connect
from vectorai.errors import ConfigError, DatabaseError
from vectorai.redact import mask_url

PASSWORD = "Hunter2-s3cret"
#: '@' and ':' inside the password, as Peewee's parser (the last '@' ends the user) reads it.
ODD_PASSWORD = "hun@t:er2"
#: Nothing listens on port 1: a quick connection failure.
CLOSED = "127.0.0.1:1"

FAILING_URLS = {
    "user": f"postgresql://app:{PASSWORD}@{CLOSED}/predictions",
    "odd password": f"postgresql://app:{ODD_PASSWORD}@{CLOSED}/predictions",
    "empty user": f"postgresql://:{PASSWORD}@{CLOSED}/predictions",
    "query": f"postgresql://app@{CLOSED}/predictions?password={PASSWORD}",
    "sslpassword": f"postgresql://app@{CLOSED}/predictions?sslmode=prefer&sslpassword={PASSWORD}",
    # Peewee's own error for this one quotes the whole URL.
    "no database": f"postgresql://app:{PASSWORD}@{CLOSED}",
}


def assert_clean(text: str, where: str) -> None:
    for secret in (PASSWORD, ODD_PASSWORD, "s3cret", "t:er2"):
        assert secret not in text, f"{where} shows the password:\n{text[-3000:]}"


def failure_text(port: int, task_id: str) -> str:
    """The failure text luigid shows for a task (the worker sends it JSON-encoded)."""
    raw = api(port, "fetch_error", {"task_id": task_id})["error"]
    assert_clean(raw, "luigid's failure text, as stored")
    return json.loads(raw)


@pytest.mark.parametrize("form", sorted(FAILING_URLS))
def test_database_errors_never_show_the_password(form):
    url = FAILING_URLS[form]
    with pytest.raises(DatabaseError) as err:
        connect(url, connect_timeout_s=2)
    assert_clean(str(err.value), "DatabaseError")
    # The error still names the database, with the password masked.
    assert str(err.value).startswith(f"database {mask_url(url)}: "), str(err.value)


def test_mlflow_errors_and_uri_never_show_the_password(monkeypatch, tmp_path):
    import mlflow

    from vectorai.tracking import mlflow_run

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.raises(ConfigError) as err:
            with mlflow_run(f"http://alice:{ODD_PASSWORD}@{CLOSED}", "e", tmp_path, "r"):
                pass
        # MLflow holds (and prints, in "View run ... at") the URI without the credentials.
        assert mlflow.get_tracking_uri() == f"http://{CLOSED}"
    finally:
        mlflow.set_tracking_uri(previous)
    assert str(err.value).startswith(f"setting mlflow.tracking_uri: cannot use MLflow store http://alice:***@{CLOSED}")
    assert "\n" not in str(err.value)
    assert_clean(str(err.value), "ConfigError")


@pytest.mark.luigid
def test_failed_runs_show_no_password_anywhere(project, luigid, tmp_path):  # noqa: F811
    for number, (form, url) in enumerate(sorted(FAILING_URLS.items())):
        proc = project.luigi("PredictTask", "--require-stream", "false", "--database-connect-timeout-s", "2",
                             "--run-at", f"fail{number}", "--scheduler-host", "127.0.0.1",
                             "--scheduler-port", str(luigid), local=False, check=False,
                             extra_env={"DATABASE_URL": url})
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "vectorai error: database postgresql://" in output, output[-3000:]
        assert_clean(output, f"luigi's output ({form})")
        failed = api(luigid, "task_list", {"status": "FAILED", "upstream_status": "", "search": f"fail{number}"})
        [task_id] = failed
        error = failure_text(luigid, task_id)
        assert error.startswith("DatabaseError: database postgresql://"), error
        assert_clean(error, f"luigid's failure text ({form})")
        results = subprocess.run([str(Path(sys.executable).parent / "vectorai-results")],
                                 cwd=project.root, env=project.command_env({"DATABASE_URL": url}),
                                 capture_output=True, text=True, timeout=60)
        assert results.returncode == 1 and "vectorai-results: database postgresql://" in results.stderr
        assert_clean(results.stdout + results.stderr, f"vectorai-results ({form})")
    # An MLflow store with a password, unreachable: TrainModel fails at the start of training.
    proc = project.luigi("TrainModel", "--epochs", "1", "--scheduler-host", "127.0.0.1",
                         "--scheduler-port", str(luigid), local=False, check=False,
                         extra_env={"MLFLOW_TRACKING_URI": f"http://alice:{PASSWORD}@{CLOSED}",
                                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "vectorai error: setting mlflow.tracking_uri" in output, output[-3000:]
    assert_clean(output, "luigi's output (MLflow)")
    [task_id] = api(luigid, "task_list", {"status": "FAILED", "upstream_status": "", "search": "TrainModel"})
    error = failure_text(luigid, task_id)
    assert error.startswith("ConfigError: setting mlflow.tracking_uri"), error
    assert_clean(error, "luigid's failure text (MLflow)")
    assert_clean((tmp_path / "luigid.log").read_text(errors="replace"), "luigid's log")


@pytest.mark.postgres
def test_successful_runs_report_the_masked_url(project, pg_database):
    parts = urlsplit(pg_database)  # postgresql://postgres@127.0.0.1:PORT/DB, trust authentication
    host = f"{parts.hostname}:{parts.port}"
    urls = {
        "user": f"postgresql://postgres:{PASSWORD}@{host}{parts.path}",
        "odd password": f"postgresql://postgres:{ODD_PASSWORD}@{host}{parts.path}",
        "query": f"postgresql://postgres@{host}{parts.path}?password={PASSWORD}",
    }
    expected = {
        "user": f"postgresql://postgres:***@{host}{parts.path}",
        "odd password": f"postgresql://postgres:***@{host}{parts.path}",
        "query": f"postgresql://postgres@{host}{parts.path}?password=***",
    }
    for number, (form, url) in enumerate(sorted(urls.items())):
        proc = project.luigi("PredictTask", "--run-at", f"ok{number}", extra_env={"DATABASE_URL": url})
        assert_clean(proc.stdout + proc.stderr, f"luigi's output ({form})")
        [report] = (project.data / "reports").glob(f"*-ok{number}-*.json")
        assert json.loads(report.read_text())["database"] == expected[form]
        assert_clean(report.read_text(), f"the run report ({form})")
        project.env["DATABASE_URL"] = url  # never --database-url with a password: vectorai-results refuses it
        shown = project.command("vectorai-results")
        assert f"database: {expected[form]}" in shown and "predictions: 200" in shown
        assert_clean(shown, f"vectorai-results ({form})")
    for path in project.root.rglob("*"):  # no file the runs wrote holds it either
        if path.is_file() and path.suffix in (".json", ".cfg", ".log", ".txt"):
            assert_clean(path.read_text(errors="replace"), str(path))
