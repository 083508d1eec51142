"""A Hugging Face Hub on 127.0.0.1 for the tests (imported by name: tests/ is not a package).

Serves ``root/<owner>/<name>/<path>`` at ``<url>/<owner>/<name>/resolve/<revision>/<path>`` with the headers
huggingface_hub reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``); an unknown repo answers 404
``RepoNotFound`` (what the Hub answers for a removed repo), an unknown file 404 ``EntryNotFound``.
:func:`hub_endpoint` points huggingface_hub at it for one test.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

COMMIT = "c" * 40


class HubServer:
    """The served repos live under ``root``; ``requests``: ``(repo_id, path)`` in the order asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                parts = self.path.split("?", 1)[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    self._error(404, "RepoNotFound", body)
                    return
                repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
                server.requests.append((repo, rel))
                if not (server.root / repo).is_dir():
                    self._error(404, "RepoNotFound", body)
                    return
                path = server.root / repo / rel
                if not path.is_file():
                    self._error(404, "EntryNotFound", body)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, body: bool) -> None:
                data = json.dumps({"error": code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def put_json(self, repo_id: str, files: Mapping[str, Any]) -> None:
        """Serve ``{rel_path: JSON-able}`` as files of ``repo_id``."""
        for rel, content in files.items():
            path = self.root / repo_id / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))

    def repos_asked(self) -> list[str]:
        """The repo ids requested, each once, in first-asked order."""
        return list(dict.fromkeys(repo for repo, _ in self.requests))


def cache_repo(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` (subfolders included) out in the Hugging Face cache ``cache`` as ``repo_id`` at
    :data:`COMMIT`, as huggingface_hub does: blobs by content, a snapshot linking to them, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(f.relative_to(folder).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


@contextmanager
def hub_endpoint(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running :class:`HubServer` that huggingface_hub talks to (online, cache under ``root/cache``)."""
    import huggingface_hub.constants as c

    srv = HubServer(root / "hub")
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    for name in ("HF_HUB_OFFLINE", "FIDESR_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", srv.url)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", srv.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root / "cache"))
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
