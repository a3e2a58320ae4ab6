"""Configuration, read in one place per concern: each class is a section of luigi.cfg.

Values can also be given on the command line (``--kafka-bootstrap-servers ...``). Settings that
are secrets or that differ per machine fall back to the usual environment variables, so nothing
secret ever sits in a committed file.
"""

from __future__ import annotations

import os
from pathlib import Path

import luigi

from tasks.params import DATABASE_URL_HOME, KAFKA_HOME, MLFLOW_URI_HOME, UrlParameter


def _env_or(value: str, env: str, default: str = "") -> str:
    return value or os.environ.get(env, "") or default


class paths(luigi.Config):  # noqa: N801 - luigi maps the class name to the [paths] section
    data_dir = luigi.Parameter(default="data", description="Data root (external/, processed/, "
                               "stream/, reports/); relative paths are relative to the working directory")
    models_dir = luigi.Parameter(default="models", description="Where trained and exported models go")
    metrics_dir = luigi.Parameter(default="", description="Where PredictTask writes its Prometheus text file "
                                  "(node_exporter's --collector.textfile.directory); empty: <data_dir>/metrics; "
                                  "'none': no file")

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def metrics(self) -> Path | None:
        """The Prometheus text file folder, or None when turned off."""
        if self.metrics_dir.strip().lower() == "none":
            return None
        return Path(self.metrics_dir) if self.metrics_dir else self.data / "metrics"

    @property
    def models(self) -> Path:
        return Path(self.models_dir)


class mlflow(luigi.Config):  # noqa: N801
    tracking_uri = UrlParameter(default="", secret_home=MLFLOW_URI_HOME, description="MLflow tracking URI; empty: "
                                "$MLFLOW_TRACKING_URI, else a SQLite store in <data_dir>/mlflow")
    experiment = luigi.Parameter(default="vectorai", description="MLflow experiment name")

    def resolved_uri(self) -> str:
        from vectorai.tracking import default_tracking_uri

        return _env_or(self.tracking_uri, "MLFLOW_TRACKING_URI") or default_tracking_uri(paths().data / "mlflow")

    def store_identity(self) -> str:
        """The resolved store, credentials left out: what registrations, decisions and the
        registry's luigid resource are tied to."""
        from vectorai.tracking import store_identity

        return store_identity(self.resolved_uri())

    @property
    def artifact_dir(self) -> Path:
        return paths().data / "mlflow" / "artifacts"


class registry(luigi.Config):  # noqa: N801
    model_name = luigi.Parameter(default="vectorai-{dataset}", description="Registered model each export becomes "
                                 "a version of; {dataset} is the dataset's label (vectorai-mnist-sample)")
    cache_dir = luigi.Parameter(default="", description="Where registered versions are downloaded, once each "
                                "(<cache_dir>/<name>/<version>/); empty: <data_dir>/mlflow/models-cache")

    def name_for(self, dataset_label: str) -> str:
        return self.model_name.replace("{dataset}", dataset_label)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else paths().data / "mlflow" / "models-cache"


class database(luigi.Config):  # noqa: N801
    url = UrlParameter(default="", secret_home=DATABASE_URL_HOME, description="Results database URL; empty: "
                       "$DATABASE_URL, else sqlite:///<data_dir>/predictions.sqlite. Put passwords in $DATABASE_URL, "
                       "not here")
    connect_timeout_s = luigi.IntParameter(default=10, description="Give up connecting after this long")

    def resolved_url(self) -> str:
        from vectorai.db import sqlite_url

        return _env_or(self.url, "DATABASE_URL") or sqlite_url(paths().data / "predictions.sqlite")


class stream(luigi.Config):  # noqa: N801
    transport = luigi.Parameter(default="local", description="local, kafka or pubsub")
    topic = luigi.Parameter(default="vectorai-images", description="Topic (local queue file, Kafka topic, "
                            "Pub/Sub topic)")
    group = luigi.Parameter(default="vectorai-predict", description="Consumer group (local, Kafka)")
    local_dir = luigi.Parameter(default="", description="Folder of the local queue files; empty: <data_dir>/stream")
    encoding = luigi.Parameter(default="png", description="How StreamData encodes images: png, jpeg or raw")
    publish_timeout_s = luigi.FloatParameter(default=60.0, description="How long StreamData waits for the broker "
                                             "to confirm")
    max_message_bytes = luigi.IntParameter(default=8 * 1024 * 1024, description="Larger payloads are dead-lettered")
    max_pixels = luigi.IntParameter(default=4096 * 4096, description="Larger images are dead-lettered before decoding")
    jpeg_draft = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                     description="Decode a JPEG at 1/2, 1/4 or 1/8 of its size when the model "
                                     "takes at most that (libjpeg's DCT scaling); false: always at full size")


class kafka(luigi.Config):  # noqa: N801
    bootstrap_servers = UrlParameter(default="", secret_home=KAFKA_HOME, description="host:port list; empty: "
                                     "$KAFKA_BOOTSTRAP_SERVERS, else localhost:9092")
    partitions = luigi.IntParameter(default=1, description="Partitions when the topic is created")
    create_topic = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                       description="Create the topic when missing")
    security_protocol = luigi.Parameter(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism = luigi.Parameter(default="", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username = luigi.Parameter(default="", description="SASL user name")
    sasl_password_env = luigi.Parameter(default="KAFKA_SASL_PASSWORD", description="Environment variable holding "
                                        "the SASL password")
    ssl_cafile = luigi.Parameter(default="", description="CA bundle for SSL")
    connect_timeout_ms = luigi.IntParameter(default=10000, description="Fail when no broker answers within this time")

    def settings(self) -> dict[str, object]:
        return {
            "bootstrap_servers": _env_or(self.bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            "partitions": self.partitions,
            "create_topic": self.create_topic,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism or None,
            "sasl_username": self.sasl_username or None,
            "sasl_password": os.environ.get(self.sasl_password_env) or None,
            "ssl_cafile": self.ssl_cafile or None,
            "connect_timeout_ms": self.connect_timeout_ms,
        }


class pubsub(luigi.Config):  # noqa: N801
    project = luigi.Parameter(default="", description="GCP project id; empty: $GOOGLE_CLOUD_PROJECT")
    topic = luigi.Parameter(default="", description="Pub/Sub topic; empty: [stream] topic")
    subscription = luigi.Parameter(default="vectorai-predict", description="Subscription PredictTask pulls from")
    create_missing = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                         description="Create topic and subscription when missing")
    emulator_host = UrlParameter(default="", description="host:port of the emulator; empty: $PUBSUB_EMULATOR_HOST")
    connect_timeout_s = luigi.FloatParameter(default=10.0, description="Fail when Pub/Sub does not answer within "
                                             "this time")
    ack_deadline_s = luigi.IntParameter(default=60, description="Seconds a pulled message stays leased before "
                                        "Pub/Sub redelivers it (10-600); PredictTask extends the lease while "
                                        "the message's batch is processed")
    max_lease_s = luigi.FloatParameter(default=3600.0, description="Longest a pulled message is kept leased "
                                       "without being acknowledged or released; 0: never extend")

    def settings(self) -> dict[str, object]:
        return {
            "project": _env_or(self.project, "GOOGLE_CLOUD_PROJECT"),
            "subscription": self.subscription,
            "create_missing": self.create_missing,
            "emulator_host": _env_or(self.emulator_host, "PUBSUB_EMULATOR_HOST") or None,
            "connect_timeout_s": self.connect_timeout_s,
            "ack_deadline_s": self.ack_deadline_s,
            "max_lease_s": self.max_lease_s,
        }


def transport_settings(name: str) -> dict[str, object]:
    """Keyword settings for ``vectorai.transports.open_transport(name, ...)``."""
    cfg = stream()
    common: dict[str, object] = {"topic": cfg.topic, "group": cfg.group}
    if name == "local":
        return {**common, "root": Path(cfg.local_dir) if cfg.local_dir else paths().data / "stream"}
    if name == "kafka":
        return {**common, **kafka().settings()}
    if name == "pubsub":
        settings = pubsub().settings()
        return {**settings, "topic": pubsub().topic or cfg.topic}
    return common
