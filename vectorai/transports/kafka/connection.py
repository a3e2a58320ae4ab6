"""What every Kafka client of one transport shares: its settings, how it connects, and how a
kafka-python error reads in a TransportError."""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

from vectorai.errors import TransportError
from vectorai.redact import SecretText

SOURCE = "kafka"
#: The largest record this transport sends, and the ``max.message.bytes`` of a topic it
#: creates: Kafka's 1 MiB default would refuse the images ``[stream] max_message_bytes`` (8 MiB)
#: admits, before the consumer could even dead-letter larger ones. The consumer fetches up to
#: 16 MiB per partition, and always at least one whole record.
MAX_RECORD_BYTES = 16 * 1024 * 1024


class KafkaConnection:
    """The settings every client (producer, consumer, admin) of one transport is made with.

    Every network wait is bounded by ``connect_timeout_ms``: an unreachable broker raises
    TransportError naming the bootstrap servers instead of hanging."""

    def __init__(self, bootstrap_servers: str, *, security_protocol: str = "PLAINTEXT",
                 sasl_mechanism: str | None = None, sasl_username: str | None = None,
                 sasl_password: str | None = None, ssl_cafile: str | None = None,
                 connect_timeout_ms: int = 10000) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.connect_timeout_ms = connect_timeout_ms
        self.client_config: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in bootstrap_servers.split(",") if s.strip()],
            "security_protocol": security_protocol,
            "bootstrap_timeout_ms": connect_timeout_ms,
            "request_timeout_ms": max(connect_timeout_ms, 5000),
            "reconnect_backoff_max_ms": 2000,
        }
        if sasl_mechanism:
            # kafka-python's admin client logs its whole configuration at DEBUG: the password
            # goes in as text that prints as *** (and is sent as itself).
            self.client_config.update(sasl_mechanism=sasl_mechanism,
                                      sasl_plain_username=sasl_username,
                                      sasl_plain_password=SecretText(sasl_password) if sasl_password else None)
        if ssl_cafile:
            self.client_config["ssl_cafile"] = ssl_cafile

    def connect(self, client_class, **config: Any):
        """A ``client_class`` (KafkaProducer, KafkaConsumer, KafkaAdminClient) made with these
        settings and ``config``, or TransportError saying which broker refused it and why."""
        from kafka.errors import KafkaError

        failures = _BootstrapFailures(self.client_config["bootstrap_servers"])
        manager_log = logging.getLogger("kafka")  # kafka.net.manager and kafka.net.connection
        manager_log.addHandler(failures)
        try:
            return client_class(**self.client_config, **config)
        except KafkaError as err:
            # kafka-python retries a broker that refuses us (a wrong password, a certificate it
            # cannot verify) until the timeout and then says only "Unable to bootstrap": name the
            # broker and why it refused, which it logged on the way.
            reason = describe(err)
            if failures.last is not None:
                gave_up = (f"gave up after {self.connect_timeout_ms / 1000:g}s" if type(err).__name__ == "KafkaTimeoutError"
                           else reason)
                reason = f"{failures.last}; {gave_up}"
            raise self.error("cannot connect", reason) from None
        finally:
            manager_log.removeHandler(failures)

    def error(self, what: str, cause: BaseException | str | None) -> TransportError:
        """A TransportError saying ``what`` failed with these bootstrap servers, and why."""
        reason = cause if isinstance(cause, str) else describe(cause)
        return TransportError(SOURCE, f"{what} (bootstrap servers {self.bootstrap_servers}): {reason}")


class _BootstrapFailures(logging.Handler):
    """Keeps why kafka-python's connections to the bootstrap brokers failed, as "broker
    HOST:PORT refused the connection: Error: text", from what it logs while it retries (it
    names bootstrap brokers ``bootstrap-N``, the N-th of the configured list). A refusal
    (credentials, certificate) is kept over a later "socket disconnected", which the broker's
    closing after the refusal causes and which explains nothing."""

    _MESSAGES = ("Bootstrap connection to", "Connection failed", "%s: Connection lost")

    def __init__(self, servers: Sequence[str]) -> None:
        super().__init__(logging.WARNING)
        self.servers = list(servers)
        self.last: str | None = None
        self._pending: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(self._MESSAGES):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        cause = next((arg for arg in args if isinstance(arg, BaseException)), None)
        if cause is None:
            return
        reason = " ".join(describe(cause).split())
        node = next((str(arg.node_id) for arg in args if hasattr(arg, "node_id")),
                    next((arg for arg in args if isinstance(arg, str)), None))
        if node is None:  # "Connection failed" names no broker: the next record does
            if _REFUSAL.search(reason):
                self._pending = reason
            return
        if self._pending is not None and not _REFUSAL.search(reason):
            reason = self._pending
        self._pending = None
        broker = node
        if node.startswith("bootstrap-") and node[len("bootstrap-"):].isdigit():
            index = int(node[len("bootstrap-"):])
            if index < len(self.servers):
                broker = self.servers[index]
        if self.last is None or not _REFUSAL.search(self.last) or _REFUSAL.search(reason):
            self.last = f"broker {broker} refused the connection: {reason}"


_REFUSAL = re.compile(r"Authentication|Authorization|SSL|CERTIFICATE|certificate")


def describe(err: BaseException | None) -> str:
    """One readable line for a kafka-python error, whose ``str`` is often just its class name."""
    if err is None:
        return "unknown error"
    name = type(err).__name__
    # kafka-python's broker errors read "[Error 58] Name: Name: text".
    text = re.sub(rf"^(\[Error -?\d+\]\s*)?({re.escape(name)}:?\s*)*", "", str(err).strip())
    for noise in (f"{name}: ", name, "None"):  # kafka-python repeats the class name
        text = text.removeprefix(noise).strip()
    if name in ("KafkaTimeoutError", "NoBrokersAvailable") and not text:
        return f"{name}: no broker answered in time"
    return f"{name}: {text}" if text else name
