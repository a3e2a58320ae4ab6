"""A Prometheus text file per prediction job, for node_exporter's textfile collector.

The usual way batch jobs are monitored (Prometheus' own advice for them): after each run the job
leaves gauges saying when it last succeeded, when it last failed, and what its last successful
run did, so an alert can ask "no success for two hours" (``time() -
vectorai_predict_last_success_timestamp_seconds > 7200``) whether or not a scrape fell during a
run. One file per job (``vectorai_predict_<job>.prom``), holding every source it reads; a failure
changes only the failure time, so the last success and its figures survive it.

The file is written to a temporary name that node_exporter ignores (it reads ``*.prom`` only) in
the same folder, then renamed over the old one: a scrape sees the old file or the new one, never
half of one.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from vectorai.predict import RunReport

PREFIX = "vectorai_predict_"

#: name (without PREFIX) -> help text, in the order they are written. All are gauges: each says
#: something about the job's last run (or last success / failure), not a count since some start.
METRICS: dict[str, str] = {
    "last_run_messages_consumed": "Messages consumed from the source by the last successful run.",
    "last_run_messages_predicted": "Messages classified and stored for the first time by the last successful run.",
    "last_run_messages_already_predicted": "Messages of the last successful run whose id was already stored "
                                           "(redeliveries).",
    "last_run_messages_duplicated": "Messages of the last successful run whose id came again in the same batch.",
    "last_run_messages_dead_lettered": "Messages the last successful run stored as dead letters.",
    "last_run_duration_seconds": "Seconds the last successful run spent consuming and classifying "
                                 "(without the final wait that proved the source drained).",
    "last_run_images_per_second": "Messages consumed from the source per second in the last successful run.",
    "last_run_accuracy": "Share of the last successful run's labelled messages the model classified right.",
    "last_run_shadow_agreement": "Share of the last successful run's messages on which the shadow model "
                                 "agreed with the model (shadow scoring only).",
    "last_run_shadow_accuracy": "Share of the last successful run's labelled messages the shadow model "
                                "classified right (shadow scoring only).",
    "last_run_shadow_errors": "Batches of the last successful run the shadow model failed on, gave a "
                              "non-finite output for some images of, or whose shadow rows the database "
                              "refused; their primary rows were stored (shadow scoring only).",
    "last_run_shadow_unavailable": "1 when the last successful run could not load its shadow model and scored "
                                   "with the primary model alone, else 0 (shadow scoring only).",
    "drift_score": "How far the last successful run's model outputs were from the model's reference (the worst "
                   "window's largest total-variation distance: 0 alike, 1 nothing in common); drift test only.",
    "drift_p_value": "The last successful run's smallest drift-test p-value over its windows (Bonferroni-corrected "
                     "within each); drift test only.",
    "drift_detected": "1 when a window of the last successful run was flagged as drifted from the model's reference, "
                      "else 0; drift test only.",
    "estimated_accuracy": "The last successful run's mean calibrated confidence: its accuracy estimated without labels "
                          "(unreliable when drift_detected is 1).",
    "last_success_timestamp_seconds": "Unix time the job last finished successfully.",
    "last_failure_timestamp_seconds": "Unix time the job last failed.",
}

#: One sample line as :func:`render` writes it.
_SAMPLE = re.compile(r'(?P<name>[a-z_]+)\{predict_job="(?P<job>(?:[^"\\]|\\.)*)",source="(?P<source>(?:[^"\\]|\\.)*)",'
                     r'model_version="(?P<version>(?:[^"\\]|\\.)*)"\} (?P<value>\S+)')
_JOB_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass
class JobMetrics:
    """What the file says about one job: per source, metric name (without PREFIX) -> value."""

    job: str
    model_version: str
    sources: dict[str, dict[str, float]]


def metrics_path(directory: Path, job: str) -> Path:
    """``<directory>/vectorai_predict_<job>.prom``, the job's name made safe for a file name."""
    return directory / f"{PREFIX}{_JOB_NAME.sub('+', job)[:100] or 'default'}.prom"


def record_success(directory: Path, job: str, report: RunReport, *, now: float | None = None) -> Path:
    """Write the job's file after a successful run: the report's figures per source, the
    success time, and the previous file's failure time."""
    now = time.time() if now is None else now
    previous = read_metrics(metrics_path(directory, job))
    seconds = report.seconds
    sources: dict[str, dict[str, float]] = {}
    for name, counts in report.by_source.items():
        values = {
            "last_run_messages_consumed": counts.consumed,
            "last_run_messages_predicted": counts.predicted,
            "last_run_messages_already_predicted": counts.already_predicted,
            "last_run_messages_duplicated": counts.duplicates,
            "last_run_messages_dead_lettered": counts.dead_letters,
            "last_run_duration_seconds": seconds,
            "last_run_images_per_second": counts.consumed / seconds if seconds > 0 else 0.0,
            "last_success_timestamp_seconds": now,
        }
        # Ratios only where there is something to divide by: an absent sample, not a 0 or NaN.
        if counts.labelled:
            values["last_run_accuracy"] = counts.correct / counts.labelled
        if counts.shadow_scored:
            values["last_run_shadow_agreement"] = counts.shadow_agreed / counts.shadow_scored
        if counts.shadow_scored and counts.labelled:
            values["last_run_shadow_accuracy"] = counts.shadow_correct / counts.labelled
        if report.shadow_model_version or report.shadow_unavailable:
            values["last_run_shadow_errors"] = counts.shadow_errors
            values["last_run_shadow_unavailable"] = 1 if report.shadow_unavailable else 0
        values.update(_drift_values(report.drift))
        failed = previous.sources.get(name, {}).get("last_failure_timestamp_seconds") if previous else None
        if failed is not None:
            values["last_failure_timestamp_seconds"] = failed
        sources[name] = values
    return write_metrics(directory, JobMetrics(job, report.model_version, sources))


def _drift_values(drift: dict | None) -> dict[str, float]:
    """The run's drift figures (the same for each of its sources: the test is of the run)."""
    if not drift:
        return {}
    values: dict[str, float] = {}
    if drift.get("estimated_accuracy") is not None:
        values["estimated_accuracy"] = float(drift["estimated_accuracy"])
    if drift.get("p_value") is not None:
        values.update(drift_score=float(drift["score"]), drift_p_value=float(drift["p_value"]),
                      drift_detected=1.0 if drift.get("drifted") else 0.0)
    return values


def record_failure(directory: Path, job: str, sources: Iterable[str], model_version: str = "", *,
                   now: float | None = None) -> Path:
    """Write the job's file after a failed run: the failure time for each of ``sources``, and
    everything the previous file said about the last success, unchanged. ``model_version``:
    the model the failed run had loaded; empty when it failed before, and then the previous
    file's is kept."""
    now = time.time() if now is None else now
    previous = read_metrics(metrics_path(directory, job))
    kept = {name: dict(values) for name, values in previous.sources.items()} if previous else {}
    for name in sources:
        kept.setdefault(name, {})["last_failure_timestamp_seconds"] = now
    version = model_version or (previous.model_version if previous else "")
    return write_metrics(directory, JobMetrics(job, version, kept))


def render(metrics: JobMetrics) -> str:
    """The Prometheus text exposition format of ``metrics``: every sample labelled with the
    job (``predict_job``: Prometheus' own ``job`` label names the scraped node_exporter), its
    source and the model version of the job's latest run."""
    lines: list[str] = []
    for name, help_text in METRICS.items():
        samples = [(source, values[name]) for source, values in sorted(metrics.sources.items()) if name in values]
        if not samples:
            continue
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} gauge")
        for source, value in samples:
            labels = (f'predict_job="{_escape(metrics.job)}",source="{_escape(source)}",'
                      f'model_version="{_escape(metrics.model_version)}"')
            lines.append(f"{PREFIX}{name}{{{labels}}} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def write_metrics(directory: Path, metrics: JobMetrics) -> Path:
    """Atomically replace the job's file with ``metrics``; returns its path."""
    path = metrics_path(directory, metrics.job)
    directory.mkdir(parents=True, exist_ok=True)
    # A dot name without .prom: node_exporter skips it while it is being written. Created with
    # the umask's usual 0644, not mkstemp's 0600, since node_exporter often runs as another user.
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render(metrics))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_metrics(path: Path) -> JobMetrics | None:
    """What a file written by :func:`write_metrics` says; None when there is none. Lines that
    are not ours are ignored (a file edited by hand, an older version's metric)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    job, version = "", ""
    sources: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line)
        if match is None or not match["name"].startswith(PREFIX):
            continue
        name = match["name"][len(PREFIX):]
        if name not in METRICS:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        job, version = _unescape(match["job"]), _unescape(match["version"])
        sources.setdefault(_unescape(match["source"]), {})[name] = value
    return JobMetrics(job, version, sources)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
