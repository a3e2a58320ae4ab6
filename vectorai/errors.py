"""One small tree of exceptions; each names the input and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class VectoraiError(Exception):
    """Base of every error the library raises on purpose. ``str(err)`` is one readable line."""


class ConfigError(VectoraiError):
    """A setting has a value that cannot work."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"setting {setting}: {reason}")


class DatasetError(VectoraiError):
    """A dataset file or folder is missing, malformed or unusable."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"dataset {self.path}: {reason}")


class DownloadError(VectoraiError):
    """A download failed or its checksum did not match."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"download {url}: {reason}")


class ImageError(VectoraiError):
    """An image cannot be preprocessed (wrong shape, NaN/inf values, out-of-range values)."""


class ModelError(VectoraiError):
    """A model file is missing, corrupt, or does not fit the configured input."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"model {self.path}: {reason}")


class ExportParityError(ModelError):
    """The exported ONNX model does not reproduce the Keras model's outputs."""


class MessageDecodeError(VectoraiError):
    """A message from a stream cannot be turned into an image (a poison message)."""

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"message {key or '<no id>'} from {source}: {reason}")


class BatchError(VectoraiError):
    """Something that concerns a whole batch failed (not one message: those are dead letters)."""

    def __init__(self, batch: str, reason: str) -> None:
        self.batch = batch
        self.reason = reason
        super().__init__(f"{batch}: {reason}")


class TransportError(VectoraiError):
    """A broker is unreachable or refused an operation."""

    def __init__(self, transport: str, reason: str) -> None:
        self.transport = transport
        self.reason = reason
        super().__init__(f"transport {transport}: {reason}")


class DatabaseError(VectoraiError):
    """The results database is unreachable or its URL is malformed."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database {url}: {reason}")


class RegistryError(VectoraiError):
    """A ``models:/`` URI does not resolve, or the model registry refused an operation."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"model {uri}: {reason}")


class ReviewError(VectoraiError):
    """A correction or a page request that cannot be carried out (unknown message, bad filter)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")
