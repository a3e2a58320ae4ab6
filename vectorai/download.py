"""Fetch public datasets into ``data/external/NAME``: resumable, checksum-verified, atomic.

A file appears under its final name only after its SHA-256 matched; a ``<file>.sha256`` sidecar
then records the verified digest (the CIFAR-10 loader opens its pickles only when that sidecar
matches the archive). Each process downloads into a temporary file of its own beside the target
and renames it into place, so two runs at once each verify what they wrote and neither writes
into the other's file. ``vectorai-download NAME`` is the command-line entry point.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import secrets
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple, Sequence

from vectorai.errors import ConfigError, DownloadError, VectoraiError

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
_CHUNK = 1 << 16


class RemoteFile(NamedTuple):
    """One file of a dataset: where it lives, what to call it here, its published SHA-256."""

    url: str
    filename: str
    sha256: str


_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


def _idx_dataset(base_url: str, *sha256: str) -> tuple[RemoteFile, ...]:
    """The four IDX files of an MNIST-style dataset at ``base_url``, with their checksums in
    ``_IDX_FILES`` order."""
    return tuple(RemoteFile(base_url + name, name, digest) for name, digest in zip(_IDX_FILES, sha256, strict=True))


# Checksums as published in tensorflow-datasets' url_checksums (mnist.txt, fashion_mnist.txt);
# the CIFAR-10 one as in torchvision's dataset definitions and many independent records.
DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": _idx_dataset(_MNIST, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                          "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                          "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                          "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    "fashion-mnist": _idx_dataset(_FASHION, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                  "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                  "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                  "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    "cifar10": (
        RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                   "cifar-10-python.tar.gz", CIFAR10_SHA256),
    ),
}


# --------------------------------------------------------------------------------------------
# Checksums and their sidecars
# --------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (archives are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_checksum_sidecar(path: Path, digest: str) -> None:
    """Record a verified digest in ``sha256sum`` format, atomically."""
    sidecar = sidecar_path(path)
    tmp = _own_name(sidecar)  # another run may be writing the same sidecar at this moment
    tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    os.replace(tmp, sidecar)


def read_checksum_sidecar(path: Path) -> str | None:
    """The digest recorded in ``<path>.sha256``, or None if absent or malformed."""
    try:
        text = sidecar_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split()[0].lower() if text else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def download_dataset(
    name: str,
    dest_root: Path,
    *,
    files: Sequence[RemoteFile] | Sequence[tuple[str, str, str]] | None = None,
    progress: bool = True,
    timeout_s: float = 60,
) -> Path:
    """Fetch every file of dataset ``name`` into ``dest_root/name`` and return that folder.

    ``files`` overrides the registry (tests, mirrors). Files already present with the right
    checksum are skipped; an interrupted download resumes from its ``.part`` file.
    """
    if files is None:
        if name not in DATASETS:
            raise ConfigError("dataset", f"unknown dataset {name!r}; downloadable: "
                                         f"{', '.join(sorted(DATASETS))}")
        files = DATASETS[name]
    dest = Path(dest_root) / name
    dest.mkdir(parents=True, exist_ok=True)
    for entry in files:
        fetch_file(RemoteFile(*entry), dest, progress=progress, timeout_s=timeout_s)
    return dest


def fetch_file(remote: RemoteFile, dest: Path, *, progress: bool = True,
               timeout_s: float = 60) -> Path:
    """Download one file into ``dest`` unless a verified copy is already there."""
    expected = remote.sha256.lower()
    target = dest / remote.filename
    if target.is_file():
        actual = sha256_of(target)
        if actual == expected:
            log.info("%s: present and verified, skipping", target)
            write_checksum_sidecar(target, actual)
            return target
        log.warning("%s: SHA-256 %s is not the expected %s; downloading again",
                    target, actual, expected)
    part = target.with_name(target.name + ".part")
    own = _claim_part(part)
    try:
        _download_to_part(remote.url, own, kept_as=part, progress=progress, timeout_s=timeout_s)
        # Checked on the file that becomes the target: no other process holds it, so the bytes
        # hashed are the bytes renamed into place.
        actual = sha256_of(own)
    except BaseException:
        _give_back(own, part)
        raise
    if actual != expected:
        own.unlink()
        raise DownloadError(remote.url, f"SHA-256 mismatch: expected {expected}, got {actual}; "
                                        "the download was removed")
    os.replace(own, target)
    write_checksum_sidecar(target, actual)
    return target


def _own_name(path: Path) -> Path:
    """A name beside ``path`` that no other process (or thread) will pick."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}")


def _claim_part(part: Path) -> Path:
    """A temporary file of this process's own, holding what ``part`` (an interrupted download)
    held, if anything: of several processes renaming it at once, exactly one gets it."""
    own = _own_name(part)
    try:
        os.rename(part, own)
    except FileNotFoundError:
        pass  # nothing to resume, or another process took it: start from the beginning
    return own


def _give_back(own: Path, part: Path) -> None:
    """Keep what ``own`` holds as ``part`` for the next run to resume, or remove it when empty."""
    try:
        if own.stat().st_size:
            os.replace(own, part)
        else:
            own.unlink()
    except FileNotFoundError:
        pass


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _download_to_part(url: str, part: Path, *, kept_as: Path, progress: bool, timeout_s: float) -> None:
    """Fill ``part`` with the whole body at ``url``, continuing what is already there; what it
    holds when this fails is kept as ``kept_as``."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vectorai-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310
    except urllib.error.HTTPError as err:
        err.close()  # an HTTPError holds the open connection
        if err.code == 416 and offset:
            # Nothing left to send from that offset: the part is complete (or too long, which
            # the checksum will catch).
            return
        raise DownloadError(url, f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(url, f"cannot connect: {reason}") from err

    with response:
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        if offset and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = _CONTENT_RANGE.fullmatch(content_range)
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(url, f"asked to resume at byte {offset}, the server sent "
                                         f"range {content_range!r}")
            mode = "ab"
        else:
            # 200 to a Range request: the server ignores ranges, so start from the beginning.
            if offset:
                log.info("%s: server does not resume; restarting", url)
            offset, mode = 0, "wb"
        total = offset + remaining if remaining is not None else None
        received = _copy_body(url, response, part, kept_as, mode, offset, total, progress)
    if remaining is not None and received < remaining:
        raise DownloadError(url, f"connection closed after {offset + received} of {total} bytes; "
                                 f"the partial download is kept in {kept_as} and will be resumed")


def _copy_body(url: str, response: http.client.HTTPResponse, part: Path, kept_as: Path, mode: str,
               offset: int, total: int | None, progress: bool) -> int:
    """Stream the body to ``part``; return how many bytes arrived (may be short)."""
    from tqdm import tqdm

    received = 0
    with part.open(mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                      desc=kept_as.name[: -len(".part")], disable=not progress,
                                      leave=False) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except http.client.IncompleteRead as err:
                out.write(err.partial)
                received += len(err.partial)
                break
            except (OSError, socket.timeout, http.client.HTTPException) as err:
                out.flush()
                raise DownloadError(url, f"connection failed after {offset + received} bytes "
                                         f"({err}); the partial download is kept in {kept_as} "
                                         "and will be resumed") from err
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``vectorai-download NAME [--dest data/external]``; one line and exit code 1 on error."""
    parser = argparse.ArgumentParser(
        prog="vectorai-download",
        description="Download a public dataset, verify its SHA-256 and store it for training.",
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="dataset to download")
    parser.add_argument("--dest", type=Path, default=Path("data/external"),
                        help="folder that receives NAME/ (default: data/external)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server at each step (default: 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = download_dataset(args.name, args.dest, progress=not args.quiet,
                                  timeout_s=args.timeout)
    except VectoraiError as err:
        print(f"vectorai-download: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permission denied on the destination
        print(f"vectorai-download: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.name}: ready in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
