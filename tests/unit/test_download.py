"""The downloader against a real HTTP server on loopback, serving files the tests write."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vectorai.datasets import load_dataset
from tests.http_files import SLOW_PIECE, FileServer, cifar_archive_bytes
from vectorai.download import RemoteFile, download_dataset, main, read_checksum_sidecar
from vectorai.errors import ConfigError, DownloadError


BODY = bytes(range(256)) * 400  # 100 KiB: several read chunks


def test_download_verifies_and_writes_sidecar(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    folder = download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert folder == tmp_path / "toy"
    assert (folder / "a.bin").read_bytes() == BODY
    assert read_checksum_sidecar(folder / "a.bin") == remote.sha256
    assert not (folder / "a.bin.part").exists()
    # A second run finds the verified file and does not ask the server again.
    requests_before = len(server.range_headers)
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert len(server.range_headers) == requests_before


def test_wrong_checksum_removes_part(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)._replace(sha256="ab" * 32)
    with pytest.raises(DownloadError) as err:
        download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    message = str(err.value)
    assert remote.url in message and "ab" * 32 in message
    assert hashlib.sha256(BODY).hexdigest() in message
    assert not (tmp_path / "toy" / "a.bin").exists()
    assert not (tmp_path / "toy" / "a.bin.part").exists()


def test_truncated_keeps_part_then_resumes(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    server.mode = "truncate"
    with pytest.raises(DownloadError, match="connection closed") as err:
        download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert remote.url in str(err.value)
    part = tmp_path / "toy" / "a.bin.part"
    assert part.read_bytes() == BODY[: len(BODY) // 2]
    assert not (tmp_path / "toy" / "a.bin").exists()
    server.mode = "normal"
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert server.range_headers[-1] == f"bytes={len(BODY) // 2}-"
    assert (tmp_path / "toy" / "a.bin").read_bytes() == BODY


def test_resume_from_existing_part(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin.part").write_bytes(BODY[:1000])
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert server.range_headers == ["bytes=1000-"]
    assert (tmp_path / "toy" / "a.bin").read_bytes() == BODY


def test_restart_when_server_ignores_range(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    server.mode = "ignore-range"
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin.part").write_bytes(b"stale bytes from elsewhere")
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert (tmp_path / "toy" / "a.bin").read_bytes() == BODY


def test_complete_part_gets_416_and_is_verified(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin.part").write_bytes(BODY)
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert (tmp_path / "toy" / "a.bin").read_bytes() == BODY


def test_corrupted_existing_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    remote = server.add("a.bin", BODY)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin").write_bytes(b"bit rot")
    download_dataset("toy", tmp_path, files=[remote], progress=False, timeout_s=5)
    assert (tmp_path / "toy" / "a.bin").read_bytes() == BODY


def test_http_error_and_unknown_name(server: FileServer, tmp_path: Path) -> None:
    missing = RemoteFile(f"{server.url}/missing.bin", "missing.bin", "0" * 64)
    with pytest.raises(DownloadError, match="404") as err:
        download_dataset("toy", tmp_path, files=[missing], progress=False, timeout_s=5)
    assert "missing.bin" in str(err.value)
    with pytest.raises(ConfigError, match="mnist"):
        download_dataset("imagenet", tmp_path, progress=False)


def test_downloaded_cifar_archive_loads(server: FileServer, tmp_path: Path) -> None:
    """End to end: the sidecar the downloader writes is what lets the CIFAR loader open it."""
    remote = server.add("cifar-10-python.tar.gz", cifar_archive_bytes())
    download_dataset("cifar10", tmp_path / "external", files=[remote], progress=False,
                     timeout_s=5)
    data = load_dataset("cifar10", tmp_path / "external")
    assert isinstance(data.images, np.ndarray) and data.images.shape == (24, 32, 32, 3)


def test_main_prints_one_line_and_returns_1(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise DownloadError("https://example.invalid/x", "cannot connect: no route")

    monkeypatch.setattr("vectorai.download.download_dataset", refuse)
    assert main(["mnist", "--dest", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0]


# The command-line entry point as `vectorai-download` runs it, with the registry's dataset "toy"
# pointing at the loopback server (the real registry's files have checksums no test file has).
_CLI = ("import sys, vectorai.download as d; d.DATASETS['toy'] = (d.RemoteFile(*sys.argv[1:4]),); "
        "sys.exit(d.main(['toy', '--dest', sys.argv[4], '--quiet', '--timeout', '20']))")


def test_two_downloads_at_once_both_succeed_with_the_right_file(server: FileServer, tmp_path: Path) -> None:
    body = np.random.default_rng(2).bytes(40 * SLOW_PIECE)  # 4 s from the slow server
    remote = server.add("a.bin", body)
    server.mode = "slow"
    folder = tmp_path / "toy"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", _CLI, *remote, str(tmp_path)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The second starts once the first is writing, so that it finds a download under way.
    deadline = time.monotonic() + 20
    while not (folder.is_dir() and any(p.stat().st_size for p in folder.iterdir())):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=60) for process in (first, second)]

    assert hashlib.sha256((folder / "a.bin").read_bytes()).hexdigest() == remote.sha256, outputs
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert read_checksum_sidecar(folder / "a.bin") == remote.sha256
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "a.bin.sha256"]  # no temporary file left
