"""Registered model names, versions and ``models:/`` URIs, checked before they name a folder of
the local cache or go into a registry search."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vectorai.errors import RegistryError

CHAMPION = "champion"
PREVIOUS = "previous"

#: What a registered model name may hold here: it becomes a folder of the local cache.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")
#: What a version number from the registry must look like before it becomes a cache folder.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
#: The version tag holding the SHA-256 of its model.onnx, set when the version is created:
#: what every download and every cached copy is checked against.
SHA256_TAG = "sha256"


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered version, as the registry describes it."""

    name: str
    version: str
    run_id: str
    source: str
    #: The registry's SHA-256 tag of the version's model.onnx; empty for a version registered
    #: without one (before the tag existed, or by another tool).
    sha256: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        """``NAME/VERSION``: what each prediction row records as its model version."""
        return f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def check_model_name(name: str, what: str = "registered model") -> str:
    """``name`` when it is a usable registered model name (it also names a cache folder)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(name, f"{what} name must be 1-100 letters, digits and . _ - (not starting with . "
                            "or -)")
    return name


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as (name, alias, version)."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise RegistryError(uri, "not a model URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    check_model_name(match["name"])
    return match["name"], match["alias"], match["version"]


def check_version(version: str, subject: str) -> str:
    """``version`` when it is a plain version number: it becomes a folder of the local cache, so
    whatever a server answers must not name another place."""
    if not _VERSION.fullmatch(str(version)):
        raise RegistryError(subject, f"the registry answered version {str(version)[:40]!r}, which is not a "
                            "version number (digits only)")
    return str(version)
