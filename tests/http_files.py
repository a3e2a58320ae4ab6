"""A real HTTP server on loopback serving files the tests write, and dataset files in the
official formats, for the downloader and loader tests."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
from typing import Iterator

import numpy as np
import pytest

from vectorai.download import RemoteFile


#: What a "slow" server sends at a time.
SLOW_PIECE = 8192


class FileServer:
    """Serves ``files`` by path; ``mode`` picks a misbehaviour per test."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "normal"  # "normal" | "ignore-range" | "truncate" | "slow"
        #: In "slow" mode, the body goes out in pieces of SLOW_PIECE bytes this far apart.
        self.slow_interval_s = 0.1
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
                if outer.mode == "slow":
                    for piece in range(start, len(body), SLOW_PIECE):
                        self.wfile.write(body[piece:piece + SLOW_PIECE])
                        self.wfile.flush()
                        time.sleep(outer.slow_interval_s)
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


def cifar_archive_bytes(per_batch: int = 4, learnable: bool = False) -> bytes:
    """A small cifar-10-python.tar.gz in the official layout. ``learnable``: each class has its
    own colour under the noise, so a model trained on it can be checked for accuracy."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (10, 3))
    members = {"batches.meta": {b"label_names": [f"c{i}".encode() for i in range(10)]}}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        if learnable:
            # Rows are channel planes (R 1024, G 1024, B 1024), as in the official files.
            base = np.repeat(palette[labels], 1024, axis=1)
            data = np.clip(0.7 * base + 0.3 * data, 0, 255).astype(np.uint8)
        members[name] = {b"data": data, b"labels": labels}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=3)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
