"""The downloader against a real HTTP server on loopback, serving files the tests write."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from vectorai.datasets import load_dataset
from vectorai.download import RemoteFile, download_dataset, main, read_checksum_sidecar
from vectorai.errors import ConfigError, DownloadError


class FileServer:
    """Serves ``files`` by path; ``mode`` picks a misbehaviour per test."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "normal"  # "normal" | "ignore-range" | "truncate"
        self.range_headers: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                body = outer.files.get(self.path)
                outer.range_headers.append(self.headers.get("Range"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and outer.mode != "ignore-range":
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.mode == "truncate":
                    # Promise the whole body, send half, hang up.
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, name: str, body: bytes) -> RemoteFile:
        self.files[f"/{name}"] = body
        return RemoteFile(f"{self.url}/{name}", name, hashlib.sha256(body).hexdigest())


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


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


def cifar_archive_bytes(per_batch: int = 4) -> bytes:
    """A small cifar-10-python.tar.gz in the official layout."""
    rng = np.random.default_rng(0)
    members = {"batches.meta": {b"label_names": [f"c{i}".encode() for i in range(10)]}}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[name] = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         b"labels": [i % 10 for i in range(per_batch)]}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=3)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


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
