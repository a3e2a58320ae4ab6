"""One small tree of exceptions; each names the input and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class VectoraiError(Exception):
    """Base of every error the library raises on purpose. ``str(err)`` is one readable line."""


class InputError(VectoraiError):
    """An error about one named input: ``subject`` says which (a setting, a path, a URL), ``reason``
    what is wrong with it. ``str(err)`` is ``"<kind> <subject>: <reason>"``; a subclass names its ``kind``
    in its class line."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, kind: str = "", field: str = "", **rest: object) -> None:
        super().__init_subclass__(**rest)
        cls.kind = kind or cls.kind
        if field:  # the subject under the name callers know it by: err.setting, err.path, err.url, ...
            setattr(cls, field, property(lambda self: self.subject, doc=f"The {field} this error is about."))

    def __init__(self, subject: str | Path, reason: str) -> None:
        self.subject = str(subject)
        self.reason = reason
        super().__init__(f"{self.kind} {self.subject}: {reason}" if self.kind else f"{self.subject}: {reason}")


class ConfigError(InputError, kind="setting", field="setting"):
    """A setting has a value that cannot work."""


class DatasetError(InputError, kind="dataset", field="path"):
    """A dataset file or folder is missing, malformed or unusable."""


class DownloadError(InputError, kind="download", field="url"):
    """A download failed or its checksum did not match."""


class ImageError(VectoraiError):
    """An image cannot be preprocessed (wrong shape, NaN/inf values, out-of-range values)."""


class ModelError(InputError, kind="model", field="path"):
    """A model file is missing, corrupt, or does not fit the configured input."""


class ExportParityError(ModelError):
    """The exported ONNX model does not reproduce the Keras model's outputs."""


class MessageDecodeError(VectoraiError):
    """A message from a stream cannot be turned into an image (a poison message)."""

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"message {key or '<no id>'} from {source}: {reason}")


class BatchError(InputError, field="batch"):
    """Something that concerns a whole batch failed (not one message: those are dead letters)."""


class TransportError(InputError, kind="transport", field="transport"):
    """A broker is unreachable or refused an operation."""


class DatabaseError(InputError, kind="database", field="url"):
    """The results database is unreachable or its URL is malformed."""


class RegistryError(InputError, kind="model", field="uri"):
    """A ``models:/`` URI does not resolve, or the model registry refused an operation."""


class ReviewError(InputError, field="what"):
    """A correction or a page request that cannot be carried out (unknown message, bad filter)."""
