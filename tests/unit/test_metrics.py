"""PredictTask's Prometheus text file, read back the way Prometheus' own client library parses it."""

from __future__ import annotations

import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vectorai.metrics import metrics_path, read_metrics, record_failure, record_success
from vectorai.predict import RunReport, SourceCounts


def samples(path) -> dict[tuple[str, str], tuple[float, dict[str, str]]]:
    """(metric name, source) -> (value, labels), from a real Prometheus parser."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            key = (sample.name, sample.labels["source"])
            assert key not in found, f"{key} twice: node_exporter would refuse the file"
            found[key] = (sample.value, sample.labels)
    return found


def report(**by_source: SourceCounts) -> RunReport:
    result = RunReport(model_version='mnist-"v2"\\', seconds=4.0)
    result.by_source.update(by_source)
    return result


def test_a_successful_run_writes_every_figure_per_source_with_the_model_version(tmp_path):
    run = report(kafka=SourceCounts(consumed=1000, predicted=900, already_predicted=80, duplicates=5,
                                    dead_letters=15),
                 pubsub=SourceCounts(consumed=200, predicted=200))
    path = record_success(tmp_path / "metrics", "kafka+pubsub", run, now=1_700_000_000.5)

    assert path == tmp_path / "metrics" / "vectorai_predict_kafka+pubsub.prom"
    found = samples(path)
    kafka = {name: value for (name, source), (value, _) in found.items() if source == "kafka"}
    assert kafka == {
        "vectorai_predict_last_run_messages_consumed": 1000,
        "vectorai_predict_last_run_messages_predicted": 900,
        "vectorai_predict_last_run_messages_already_predicted": 80,
        "vectorai_predict_last_run_messages_duplicated": 5,
        "vectorai_predict_last_run_messages_dead_lettered": 15,
        "vectorai_predict_last_run_duration_seconds": 4.0,
        "vectorai_predict_last_run_images_per_second": 250.0,
        "vectorai_predict_last_success_timestamp_seconds": 1_700_000_000.5,
    }
    assert found[("vectorai_predict_last_run_images_per_second", "pubsub")][0] == 50.0
    # Escaped and read back exactly: a quote and a backslash in a version do not break the file.
    assert {labels["model_version"] for _, labels in found.values()} == {'mnist-"v2"\\'}
    assert {labels["predict_job"] for _, labels in found.values()} == {"kafka+pubsub"}
    assert not any(name.endswith("last_failure_timestamp_seconds") for name, _ in found)


def test_a_failure_sets_its_time_and_keeps_the_last_success_and_its_figures(tmp_path):
    folder = tmp_path / "metrics"
    record_success(folder, "local", report(local=SourceCounts(consumed=30, predicted=30)), now=1000.0)

    record_failure(folder, "local", ["local"], now=2000.0)

    found = samples(metrics_path(folder, "local"))
    assert found[("vectorai_predict_last_failure_timestamp_seconds", "local")][0] == 2000.0
    assert found[("vectorai_predict_last_success_timestamp_seconds", "local")][0] == 1000.0
    assert found[("vectorai_predict_last_run_messages_consumed", "local")][0] == 30
    # It failed before loading a model: the version of the last run stays.
    assert found[("vectorai_predict_last_failure_timestamp_seconds", "local")][1]["model_version"] == 'mnist-"v2"\\'

    # The next success moves the success time on and keeps the failure time.
    record_success(folder, "local", report(local=SourceCounts(consumed=7, predicted=7)), now=3000.0)
    found = samples(metrics_path(folder, "local"))
    assert found[("vectorai_predict_last_success_timestamp_seconds", "local")][0] == 3000.0
    assert found[("vectorai_predict_last_failure_timestamp_seconds", "local")][0] == 2000.0
    assert found[("vectorai_predict_last_run_messages_consumed", "local")][0] == 7


def test_a_job_that_never_succeeded_has_a_failure_time_and_no_success_time(tmp_path):
    path = record_failure(tmp_path, "kafka", ["kafka"], "m-1", now=50.0)
    found = samples(path)
    assert set(found) == {("vectorai_predict_last_failure_timestamp_seconds", "kafka")}
    assert found[("vectorai_predict_last_failure_timestamp_seconds", "kafka")][1]["model_version"] == "m-1"


def test_the_file_is_replaced_whole_and_readable_by_another_user(tmp_path):
    folder = tmp_path / "metrics"
    path = record_success(folder, "local", report(local=SourceCounts(consumed=1)), now=1.0)
    inode = path.stat().st_ino
    record_success(folder, "local", report(local=SourceCounts(consumed=2)), now=2.0)

    assert path.stat().st_ino != inode, "rewritten in place: a scrape could read half a file"
    assert sorted(p.name for p in folder.iterdir()) == ["vectorai_predict_local.prom"], "a temporary file was left"
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    if old_umask & 0o004 == 0:  # node_exporter usually runs as its own user
        assert path.stat().st_mode & stat.S_IROTH
    assert read_metrics(path).sources["local"]["last_run_messages_consumed"] == 2


def test_a_job_name_never_leaves_the_folder(tmp_path):
    path = metrics_path(tmp_path, "../../etc/x y")
    assert path.parent == tmp_path and path.name == "vectorai_predict_..+..+etc+x+y.prom"


def test_lines_that_are_not_ours_are_ignored_when_the_file_is_read_back(tmp_path):
    path = metrics_path(tmp_path, "local")
    path.write_text('# a note\nsomething_else{a="b"} 1\n'
                    'vectorai_predict_last_success_timestamp_seconds{predict_job="local",source="local",'
                    'model_version="v"} 12\n')
    record_failure(tmp_path, "local", ["local"], now=13.0)
    found = samples(path)
    assert found[("vectorai_predict_last_success_timestamp_seconds", "local")][0] == 12
    assert found[("vectorai_predict_last_failure_timestamp_seconds", "local")][0] == 13


@pytest.mark.parametrize("bad", ["", "not a number"])
def test_an_unparseable_value_is_dropped_not_fatal(tmp_path, bad):
    path = metrics_path(tmp_path, "local")
    path.write_text('vectorai_predict_last_success_timestamp_seconds{predict_job="local",source="local",'
                    f'model_version="v"}} {bad}\n')
    record_failure(tmp_path, "local", ["local"], now=5.0)
    assert set(samples(path)) == {("vectorai_predict_last_failure_timestamp_seconds", "local")}


def test_a_run_s_drift_test_and_estimated_accuracy_are_written_for_each_source(tmp_path):
    run = report(local=SourceCounts(consumed=400, predicted=400), kafka=SourceCounts(consumed=200, predicted=200))
    run.drift = {"score": 0.62, "p_value": 1e-40, "drifted": True, "estimated_accuracy": 0.84,
                 "measured_accuracy": None, "window": 200, "windows": []}
    found = samples(record_success(tmp_path, "job", run, now=1.0))
    for source in ("local", "kafka"):
        assert found[("vectorai_predict_drift_score", source)][0] == 0.62
        assert found[("vectorai_predict_drift_p_value", source)][0] == 1e-40
        assert found[("vectorai_predict_drift_detected", source)][0] == 1
        assert found[("vectorai_predict_estimated_accuracy", source)][0] == 0.84

    # A model with no reference: the estimate, and no drift figures rather than a made-up 0.
    run.drift = {"score": None, "p_value": None, "drifted": False, "estimated_accuracy": 0.97}
    found = samples(record_success(tmp_path, "job", run, now=2.0))
    assert found[("vectorai_predict_estimated_accuracy", "local")][0] == 0.97
    assert not any(name.startswith("vectorai_predict_drift") for name, _ in found)
