"""Transports behind one interface, picked by name from configuration."""

from __future__ import annotations

import importlib
from typing import Any

from vectorai.errors import ConfigError
from vectorai.transports.base import OutgoingMessage, ReceivedMessage, Transport

# Imported lazily so that using the local transport never imports the Kafka or Pub/Sub clients.
_TRANSPORTS = {
    "local": ("vectorai.transports.local", "LocalTransport"),
    "kafka": ("vectorai.transports.kafka", "KafkaTransport"),
    "pubsub": ("vectorai.transports.pubsub", "PubSubTransport"),
}

TRANSPORT_NAMES = tuple(_TRANSPORTS)


def open_transport(name: str, **settings: Any) -> Transport:
    """Create the transport called ``name`` with its own keyword settings."""
    try:
        module_name, class_name = _TRANSPORTS[name]
    except KeyError:
        raise ConfigError(
            "transport", f"unknown transport {name!r}; choose one of {', '.join(TRANSPORT_NAMES)}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**settings)


def parse_sources(value: str, setting: str = "sources") -> list[str]:
    """Split a ``kafka,pubsub`` style list, rejecting unknown or repeated names."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise ConfigError(setting, "no transport named")
    for name in names:
        if name not in _TRANSPORTS:
            raise ConfigError(
                setting, f"unknown transport {name!r}; choose from {', '.join(TRANSPORT_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(setting, f"a transport is named twice in {value!r}")
    return names


__all__ = ["OutgoingMessage", "ReceivedMessage", "Transport", "open_transport", "parse_sources",
           "TRANSPORT_NAMES"]
