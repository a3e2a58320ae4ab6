"""One small tree of exceptions; each names the input and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class VectoraiError(Exception):
    """Base of every error the library raises on purpose. ``str(err)`` is one readable line."""


class InputError(VectoraiError):
    """An error about one named input: ``subject`` says which (a setting, a path, a URL), ``reason``
    what is wrong with it. ``str(err)`` is ``"<kind> <subject>: <reason>"``; a subclass sets ``kind``."""

    kind: ClassVar[str] = ""

    def __init__(self, subject: str | Path, reason: str) -> None:
        self.subject = str(subject)
        self.reason = reason
        super().__init__(f"{self.kind} {self.subject}: {reason}" if self.kind else f"{self.subject}: {reason}")


class ConfigError(InputError):
    """A setting has a value that cannot work."""

    kind = "setting"


class DatasetError(InputError):
    """A dataset file or folder is missing, malformed or unusable."""

    kind = "dataset"


class DownloadError(InputError):
    """A download failed or its checksum did not match."""

    kind = "download"


class ImageError(VectoraiError):
    """An image cannot be preprocessed (wrong shape, NaN/inf values, out-of-range values)."""


class ModelError(InputError):
    """A model file is missing, corrupt, or does not fit the configured input."""

    kind = "model"


class ExportParityError(ModelError):
    """The exported ONNX model does not reproduce the Keras model's outputs."""


class MessageDecodeError(VectoraiError):
    """A message from a stream cannot be turned into an image (a poison message)."""

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"message {key or '<no id>'} from {source}: {reason}")


class BatchError(InputError):
    """Something that concerns a whole batch failed (not one message: those are dead letters)."""


class TransportError(InputError):
    """A broker is unreachable or refused an operation."""

    kind = "transport"


class DatabaseError(InputError):
    """The results database is unreachable or its URL is malformed."""

    kind = "database"


class RegistryError(InputError):
    """A ``models:/`` URI does not resolve, or the model registry refused an operation."""

    kind = "model"


class ReviewError(InputError):
    """A correction or a page request that cannot be carried out (unknown message, bad filter)."""
