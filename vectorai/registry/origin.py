"""Where a registered version's files are, and whether the store's credentials may go there.

MLflow sends ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (which :func:`vectorai.tracking.mlflow_credentials`
lends it) as Basic auth to whatever ``http(s)://`` host a version's files are said to be on. Anyone
who can register a version could name their own host and collect them; so the credentials go only
to the tracking server's origin (scheme, host, port), and a version stored anywhere else is refused.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from vectorai.errors import RegistryError
from vectorai.redact import mask_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: MLflow resolves ``runs:/`` and ``models:/`` through the store, at most a few levels deep.
_MAX_INDIRECTIONS = 5


class Origin(NamedTuple):
    """What a browser would call an origin; ``host`` is ``None`` for an address that HTTP
    clients may read otherwise than :func:`urllib.parse.urlsplit` does (it matches nothing)."""

    scheme: str
    host: str | None
    port: int | None

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host or '?'}:{self.port}"


def http_origin(url: str) -> Origin | None:
    """The origin of an ``http(s)://`` URL (the user and password left out); None for any other
    scheme."""
    scheme = url.partition(":")[0].lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    parts = urlsplit(url)
    # HTTP clients end the host at a backslash and may read white space differently: such an
    # address is never taken for the server's own.
    if "\\" in parts.netloc or any(c.isspace() for c in parts.netloc):
        return Origin(scheme, None, None)
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return Origin(scheme, None, None)
    return Origin(scheme, (parts.hostname or "").lower() or None, port)


def files_origin(location: str, store: str) -> Origin | None:
    """The HTTP origin MLflow contacts to read ``location`` for the store at ``store``; None
    when it contacts none (``s3://``, ``gs://``, a local path: their own credentials, never the
    tracking server's)."""
    if location.partition(":")[0].lower() == "mlflow-artifacts":
        netloc = urlsplit(location).netloc
        if not netloc:
            return http_origin(store)  # resolved against the tracking server itself
        # MLflow reads mlflow-artifacts://HOST:PORT/... with the tracking URI's scheme.
        return http_origin(f"{store.partition(':')[0]}://{netloc}/")
    return http_origin(location)


def check_credentials_stay_home(subject: str, location: str, store: str) -> None:
    """A RegistryError when reading ``location`` would send the store's credentials to another
    origin than the tracking server's (``store``, the URI without its password)."""
    found = files_origin(location, store)
    if found is None or (found == http_origin(store) and found.host is not None):
        return
    raise RegistryError(subject, f"its files are on {found}, another host than the MLflow store {mask_url(store)}; "
                        "the store's credentials go to the store alone, so nothing is read from there (log the "
                        "model to the store itself)")


def checked_location(subject: str, location: str, store: str) -> str:
    """``location`` (a download URI the store gave, or a ``runs:/`` URI) with any ``runs:/`` or
    ``models:/`` in it resolved through the store, as MLflow would, after checking that reading
    it sends the store's credentials nowhere else (see :func:`check_credentials_stay_home`).
    Read that location itself afterwards, so that what was checked is what is contacted."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    for _ in range(_MAX_INDIRECTIONS):
        scheme = location.partition(":")[0].lower()
        if scheme == "runs":
            location = RunsArtifactRepository.get_underlying_uri(location, store)
        elif scheme == "models":
            location = ModelsArtifactRepository.get_underlying_uri(location)
        else:
            check_credentials_stay_home(subject, location, store)
            return location
    raise RegistryError(subject, f"its files are behind more than {_MAX_INDIRECTIONS} runs:/ or models:/ "
                        "indirections")
