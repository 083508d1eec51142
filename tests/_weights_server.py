"""A real HTTP server on 127.0.0.1 for the fetching tests (imported by name: tests/ is not a package),
and registry entries pointed at bytes the test writes."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fidesr.weights import registry as R


class WeightsServer:
    """``http.server`` in a thread serving ``root/dir/<name>`` at ``url`` (``http://127.0.0.1:PORT/dir/``).

    ``drop``: names whose response announces the full length but stops after half and closes the
    connection. ``delay``: seconds waited before each response body (lets two fetches overlap).
    ``drip``: names sent in small pieces, 0.05 s apart (a download in progress, to kill). ``slow``: names
    sent one byte every 0.2 s (a server that never quite stops). ``endless``: names answered without a
    Content-Length by a stream that never ends (zeros; one byte every 0.2 s if also ``slow``). ``gets``:
    the names requested, in order.
    """

    def __init__(self, root: Path) -> None:
        self.folder = root / "dir"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.drop: set[str] = set()
        self.drip: set[str] = set()
        self.slow: set[str] = set()
        self.endless: set[str] = set()
        self.delay = 0.0
        self.gets: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.rsplit("/", 1)[-1]
                server.gets.append(name)
                if name in server.endless:
                    self._endless(name in server.slow)
                    return
                path = server.folder / name
                if not self.path.startswith("/dir/") or not path.is_file():
                    self.send_error(404, "not on this mirror")
                    return
                data = path.read_bytes()
                time.sleep(server.delay)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if name in server.drop:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                step = 1 if name in server.slow else 256 if name in server.drip else len(data)
                try:
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i : i + step])
                        if step < len(data):
                            self.wfile.flush()
                            time.sleep(0.2 if name in server.slow else 0.05)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    return

            def _endless(self, slow: bool) -> None:
                self.send_response(200)  # HTTP/1.0, no Content-Length: the body ends when the server closes
                self.end_headers()
                block = b"\0" * (1 if slow else 1 << 16)
                try:
                    while True:
                        self.wfile.write(block)
                        if slow:
                            self.wfile.flush()
                            time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dir/"

    def put(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@contextmanager
def serve(root: Path) -> Iterator[WeightsServer]:
    """A running ``WeightsServer`` for the block."""
    srv = WeightsServer(root)
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def register(monkeypatch: pytest.MonkeyPatch, key: str, data: bytes) -> R.WeightFile:
    """Point registry entry ``key`` at ``data``: its sha256 becomes that of ``data`` for this test."""
    f = dataclasses.replace(R.FILES[key], sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(R.FILES, key, f)
    return f
