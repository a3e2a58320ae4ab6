"""The Kafka SASL password never reaches a log, at any level: kafka-python's admin client logs its
whole configuration at DEBUG, and the producer's and consumer's objects may be logged too."""

from __future__ import annotations


import pytest

from tests.conftest import new_project
from tests.unit.helpers import tiny_onnx_model
from vectorai.redact import SecretText

PASSWORD = "Kafka-s3cret-Pa55"


@pytest.mark.kafka
def test_a_debug_run_with_a_sasl_password_logs_it_nowhere(kafka_bootstrap, tmp_path):
    model = tmp_path / "tiny.onnx"
    tiny_onnx_model(model)
    project = new_project(tmp_path / "home")
    log_file = tmp_path / "debug.log"
    logging_conf = tmp_path / "logging.ini"
    # Every logger at DEBUG, to a file and to stderr: kafka-python's included.
    logging_conf.write_text(f"""[loggers]
keys = root

[handlers]
keys = file, stderr

[formatters]
keys = plain

[logger_root]
level = DEBUG
handlers = file, stderr

[handler_file]
class = FileHandler
args = ({str(log_file)!r},)
formatter = plain

[handler_stderr]
class = StreamHandler
args = (sys.stderr,)
formatter = plain

[formatter_plain]
format = %(asctime)s %(name)s %(levelname)s %(message)s
""")
    project.set("core", logging_conf_file=logging_conf)
    project.set("stream", transport="kafka", topic="sasl-secret")
    # The test broker speaks PLAINTEXT only, so the SASL handshake fails after the clients were
    # made with the password: the run fails, and nothing it logged or wrote may hold it.
    project.set("kafka", bootstrap_servers=kafka_bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN", sasl_username="vectorai", connect_timeout_ms=3000)
    proc = project.luigi("PredictTask", "--require-stream", "false", "--model-path", str(model), "--image-size", "8",
                         check=False, extra_env={"KAFKA_SASL_PASSWORD": PASSWORD})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "vectorai error: transport kafka: cannot" in output, output[-3000:]
    logged = log_file.read_text(errors="replace")
    assert "Starting KafkaAdminClient with configuration" in logged  # a DEBUG run of what used to log it
    for where, text in [("luigi's output", output), ("the debug log", logged)] + [
            (str(path), path.read_text(errors="replace")) for path in project.root.rglob("*")
            if path.is_file() and path.suffix in (".json", ".prom", ".log", ".txt", ".cfg")]:
        assert PASSWORD not in text and "s3cret" not in text, f"{where} shows the password"
    assert "'sasl_plain_password': '***'" in logged


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_the_masked_password_still_authenticates_with_its_real_value(mechanism):
    """Only its printed forms are masked: what the SASL mechanisms send is the password."""
    secret = SecretText(PASSWORD)
    assert repr(secret) == "'***'" and str(secret) == "***" and f"{secret}" == "***" and "%s" % secret == "***"
    assert repr({"sasl_plain_password": secret}) == "{'sasl_plain_password': '***'}"
    if mechanism == "PLAIN":
        from kafka.net.sasl.plain import SaslMechanismPlain

        sent = SaslMechanismPlain(sasl_plain_username="u", sasl_plain_password=secret,
                                  security_protocol="SASL_SSL").auth_bytes()
        assert sent == b"u\x00u\x00" + PASSWORD.encode()
    else:
        from kafka.net.sasl.scram import ScramClient

        assert ScramClient("u", secret, mechanism).password == PASSWORD.encode()
