"""StreamData and PredictTask."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import luigi
from luigi.util import inherits, requires

from tasks.common import VectoraiTaskMixin, check_name_part, inside, name_part, params_hash, write_json
from tasks.config import database, mlflow, paths, registry, stream, transport_settings
from tasks.data import SplitData
from tasks.live import LiveStatus, count, predict_status
from tasks.model import ExportOnnx, PromoteModel
from tasks.params import UrlParameter, config_home

if TYPE_CHECKING:
    from vectorai.predict import RunReport

log = logging.getLogger("luigi-interface")


@requires(SplitData)
class StreamData(VectoraiTaskMixin, luigi.Task):
    """Publish the stream sample; the manifest is written only after every message is confirmed.

    It needs only the split: sending images must not train, export or promote a model (a
    PredictTask pinned to a model would otherwise move ``@champion`` for every other run)."""

    transport = luigi.Parameter(config_path=dict(section="StreamData", name="transport"),
        default="", description="local, kafka or pubsub; empty: [stream] transport")
    count = luigi.IntParameter(config_path=dict(section="StreamData", name="count"),
        default=0, description="How many images to send; 0: the whole sample")
    sample_file = luigi.Parameter(config_path=dict(section="StreamData", name="sample_file"),
        default="", description="An .npz (x, optional y) to send instead of the "
                                  "split's stream sample")

    @property
    def transport_name(self) -> str:
        return self.transport or stream().transport

    def output(self) -> luigi.LocalTarget:
        # name_part: never a path outside the data folder, even before run() rejects the name.
        name = f"{name_part(self.transport_name)}-{name_part(stream().topic)}-{params_hash(self)}.json"
        return luigi.LocalTarget(paths().data / "stream" / "manifests" / name)

    def run(self) -> None:
        from vectorai.prepare import load_stream_sample
        from vectorai.streaming import publish_images
        from vectorai.transports import open_transport

        check_name_part("stream.topic", stream().topic)
        inside(paths().data, Path(self.output().path), "stream.topic")
        sample_path = Path(self.sample_file) if self.sample_file else Path(self.clone(SplitData).output().path) / "stream.npz"
        sample = load_stream_sample(sample_path, limit=self.count or None)
        cfg = stream()

        with LiveStatus(self) as live, \
                open_transport(self.transport_name, **transport_settings(self.transport_name)) as transport:
            def show(sent: int, confirmed: int, total: int) -> None:
                live.update(f"sent {count(sent)} of {count(total)}, confirmed {count(confirmed)} "
                            f"({self.transport_name} {cfg.topic})", 100.0 * confirmed / total if total else 100.0)

            # Ids name what was sent (dataset or sample file, index, the image's digest): re-sending
            # the same images gives the same ids, a different image never takes a stored one's.
            label = Path(self.sample_file).stem if self.sample_file else self.clone(SplitData).dataset_label
            ids = publish_images(transport, sample.images, sample.labels, dataset=label,
                                 encoding=cfg.encoding, timeout_s=cfg.publish_timeout_s, progress=show)
        write_json(self.output(), {"transport": self.transport_name, "topic": cfg.topic, "count": len(ids),
                                   "sample": str(sample_path), "encoding": cfg.encoding, "ids": ids})


@inherits(StreamData, PromoteModel)
class PredictTask(VectoraiTaskMixin, luigi.Task):
    """Consume the stream in batches, classify with onnxruntime, store every result."""

    sources = luigi.Parameter(default="", description="Comma-separated transports to read (e.g. kafka,pubsub); "
                              "empty: [stream] transport")
    run_at = luigi.Parameter(default="adhoc", description="Label of this run; cron passes the time "
                             "(--run-at $(date -u +%%Y-%%m-%%dT%%H)) so each scheduled run is its own task")
    require_stream = luigi.BoolParameter(default=True, significant=False, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                         description="Also run StreamData first (the demo chain); false when "
                                         "other producers feed the topic")
    predict_batch_size = luigi.IntParameter(default=256, significant=False, description="Messages per batch")
    max_batch_bytes = luigi.IntParameter(default=64 * 1024 * 1024, significant=False,
                                         description="Payload bytes per batch: a batch closes when its next "
                                         "message would pass this; one larger message is a batch of its own")
    stream_timeout_ms = luigi.IntParameter(default=2000, significant=False,
                                           description="Finish after waiting this long for new messages")
    max_messages = luigi.IntParameter(default=0, significant=False, description="Stop after this many; 0: no limit")
    inference_threads = luigi.IntParameter(default=0, significant=False,
                                           description="onnxruntime threads per call; 0: every core but one, which "
                                           "the loop's own decoding and writing keep busy (when idle, "
                                           "the loop classifies part of a batch itself)")
    decode_threads = luigi.IntParameter(default=0, significant=False,
                                        description="Threads that decode and preprocess batches of large images "
                                        "(photos) while the model runs; 0: start on the cores onnxruntime does "
                                        "not use (at least one), doubled each time the model would wait for "
                                        "decoding, up to one per core")
    drift_window = luigi.IntParameter(default=1000, significant=False,
                                      description="Test the model's outputs against its reference per window of "
                                      "this many images (a shorter run: once, on all of them; see the report's drift)")
    drift_threshold = luigi.FloatParameter(default=0.01, significant=False,
                                           description="A window whose drift test's p-value (Bonferroni-corrected) "
                                           "is below this is flagged as drifted")
    model_uri = UrlParameter(default="", secret_home=config_home("PredictTask", "model_uri"),
                             description="The registered model to score with: models:/NAME@ALIAS "
                             "or models:/NAME/VERSION, resolved through [mlflow] tracking_uri when the run "
                             "starts; empty: models:/<[registry] model_name>@champion after the chain's "
                             "PromoteModel. Its own metadata or card says what images it takes")
    model_path = luigi.Parameter(default="", description="A model to use instead of a registered one: an "
                                 "exported model.onnx, or a foreign model with its card (a Hugging Face optimum "
                                 "folder, or a folder or .onnx with vectorai.json beside it)")
    shadow_model_uri = UrlParameter(default="", secret_home=config_home("PredictTask", "shadow_model_uri"),
                                    description="Also score every batch with this registered model "
                                    "(e.g. models:/NAME@challenger) into the shadow_prediction table; the "
                                    "report gives the agreement and both accuracies. Best effort: a model that "
                                    "cannot be loaded is reported, and the run scores with the primary alone. "
                                    "Empty: no shadow")

    def requires(self):
        # A pinned model (--model-uri, --model-path) never pulls in the chain's own model.
        deps = {} if self.model_path or self.model_uri else {"model": self.clone(PromoteModel)}
        if self.require_stream:
            deps["stream"] = self.clone(StreamData)
        return deps

    @property
    def source_names(self) -> list[str]:
        from vectorai.transports import parse_sources

        if self.sources:
            return parse_sources(self.sources, "PredictTask.sources")
        return parse_sources(stream().transport, "stream.transport")

    @property
    def model_uri_to_use(self) -> str:
        """--model-uri, else the chain's registered model at @champion."""
        from vectorai.registry import CHAMPION

        return self.model_uri or f"models:/{self.clone(ExportOnnx).registered_name}@{CHAMPION}"

    @property
    def job_label(self) -> str:
        """The sources as one safe name: part of the report's name and the metrics file's."""
        return re.sub(r"[^A-Za-z0-9._-]+", "+", self.sources or stream().transport)

    def output(self) -> luigi.LocalTarget:
        # No validation here: an error raised while Luigi checks completeness is logged as a
        # traceback; run() validates the sources and fails with one line instead.
        name = f"predict-{self.job_label}-{name_part(self.run_at)}-{params_hash(self)}.json"
        return luigi.LocalTarget(paths().data / "reports" / name)

    #: The model version of this run once its model is loaded, for the metrics of a failure.
    _model_version = ""

    def run(self) -> None:
        """Predict and write the report; after a success or a failure alike, the Prometheus text
        file (``[paths] metrics_dir``)."""
        try:
            with LiveStatus(self) as live:
                report, database_url = self._predict(live)
                message, _ = predict_status(report, self.max_messages or None)
                live.update(f"done in {report.seconds:.1f} s\n{message}", 100)
            write_json(self.output(), {**report.to_dict(), "sources": self.source_names, "database": database_url,
                                       "run_at": self.run_at})
        except BaseException:
            self._record_failure()
            raise
        self._record_success(report)

    def _predict(self, live: LiveStatus) -> tuple[RunReport, str]:
        """The run's report and the database URL it wrote to (masked)."""
        from vectorai.db import connect
        from vectorai.inference import OnnxClassifier
        from vectorai.messages import DecodeLimits
        from vectorai.predict import give_large_buffers_back, load_shadow, run_predictions
        from vectorai.redact import mask_url
        from vectorai.registry import load_classifier
        from vectorai.transports import open_transport

        give_large_buffers_back()
        self._check_settings()
        cfg, db_cfg = stream(), database()
        threads = self.inference_threads or None
        # No image_size or channels here: they are about training; a model's metadata or card
        # says what it takes, and each model (the shadow too) preprocesses for itself.
        if self.model_path:
            classifier = OnnxClassifier(self.model_path, threads=threads)
        else:
            # Resolved now, not when the chain was built: a refused promotion still scores with
            # the champion, and moving the alias changes what the next scheduled run uses.
            live.update(f"resolving {self.model_uri_to_use}")
            classifier = load_classifier(self.model_uri_to_use, mlflow().resolved_uri(), registry().cache,
                                         threads=threads)
        self._model_version = classifier.info.version
        shadow, shadow_unavailable = None, ""
        if self.shadow_model_uri:
            live.update(f"resolving the shadow model {self.shadow_model_uri}")
            # Best effort: one that cannot be loaded is in the report, and the run goes on without it.
            shadow, shadow_unavailable = load_shadow(lambda: load_classifier(
                self.shadow_model_uri, mlflow().resolved_uri(), registry().cache, threads=threads),
                self.shadow_model_uri)
        url = db_cfg.resolved_url()
        live.update(f"reading {', '.join(self.source_names)} with model {classifier.info.version}",
                    0 if self.max_messages else None)
        db = connect(url, db_cfg.connect_timeout_s)
        transports = []
        try:
            for name in self.source_names:
                transports.append(open_transport(name, **transport_settings(name)))
            report = run_predictions(
                transports, classifier, db, batch_size=self.predict_batch_size, timeout_ms=self.stream_timeout_ms,
                limits=DecodeLimits(cfg.max_message_bytes, cfg.max_pixels), max_messages=self.max_messages or None,
                # At most once a second, after a commit; LiveStatus only stores it for its thread.
                progress=lambda so_far: live.update(*predict_status(so_far, self.max_messages or None)),
                shadow=shadow, decode_threads=self.decode_threads or None, jpeg_draft=cfg.jpeg_draft,
                max_batch_bytes=self.max_batch_bytes, shadow_unavailable=shadow_unavailable,
                drift_window=self.drift_window, drift_threshold=self.drift_threshold,
            )
        finally:
            for transport in transports:
                transport.close()
            db.close()
        return report, mask_url(url)

    def _check_settings(self) -> None:
        """Fail with one line naming the setting that cannot work."""
        from vectorai.errors import ConfigError

        check_name_part("PredictTask.run_at", self.run_at)
        inside(paths().data, Path(self.output().path), "PredictTask.run_at")
        for setting, value, least in (("predict_batch_size", self.predict_batch_size, 1),
                                      ("max_batch_bytes", self.max_batch_bytes, 1),
                                      ("stream_timeout_ms", self.stream_timeout_ms, 0),
                                      ("max_messages", self.max_messages, 0),
                                      ("inference_threads", self.inference_threads, 0),
                                      ("decode_threads", self.decode_threads, 0),
                                      ("drift_window", self.drift_window, 1)):
            if value < least:
                raise ConfigError(f"PredictTask.{setting}", f"{value} is not allowed; it must be at least {least}")
        if not 0.0 < self.drift_threshold < 1.0:
            raise ConfigError("PredictTask.drift_threshold", f"{self.drift_threshold} must be between 0 and 1")

    def _record_success(self, report: RunReport) -> None:
        from vectorai.metrics import record_success

        folder = paths().metrics
        if folder is not None:
            self._write_metrics(lambda: record_success(folder, self.job_label, report))

    def _record_failure(self) -> None:
        from vectorai.metrics import record_failure

        folder = paths().metrics
        if folder is None:
            return
        try:
            sources = self.source_names
        except Exception:  # noqa: BLE001 - the sources are what failed; the label still names the job
            sources = [self.job_label]
        self._write_metrics(lambda: record_failure(folder, self.job_label, sources, self._model_version))

    def _write_metrics(self, write: Callable[[], Path]) -> None:
        # Monitoring must not change the run's outcome: results are committed (or the original
        # error is on its way) by now. A file that stops being updated shows as a stale
        # last-success time, which is what the alert watches.
        try:
            write()
        except Exception as err:  # noqa: BLE001
            log.warning("%s: could not write its metrics file in %s: %s: %s", self.task_id, paths().metrics,
                        type(err).__name__, err)
