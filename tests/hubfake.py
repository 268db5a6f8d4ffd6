"""A stand-in for the Hugging Face Hub on 127.0.0.1: the HTTP routes huggingface_hub uses to fetch a model.

Routes (as huggingface_hub 2.x calls them; HF_ENDPOINT or `endpoint=` points it here):
- GET  /api/models/{repo}[/revision/{rev}]?blobs=true  model_info: sha, siblings (size, blobId, lfs), cardData
- GET  /api/models/{repo}/tree/{rev}?recursive=true     list_repo_tree: files with oid, size, lfs
- HEAD /{repo}/resolve/{rev}/{path}                    X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size
- GET  /{repo}/resolve/{rev}/{path}                    the content (Range supported)

Faults a test switches on: `gated` / `missing` repositories, a file served with other bytes than its hash
(`corrupt`), a file whose GET hangs until `release` is set (`stall`, to interrupt a download), a file whose
connection is dropped before any byte (`drop`). `gets` counts the GETs of each file.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"  # the repositories' one commit


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: set[str]  # paths stored with LFS (hashed with SHA-256 on the Hub)
    card: dict[str, Any]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    gated: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    drop: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)  # set when a stalled GET has begun
    gets: dict[str, int] = field(default_factory=dict)

    def entry(self, repo: Repo, path: str, tree: bool) -> dict[str, Any]:
        data = repo.files[path]
        e: dict[str, Any] = {"size": len(data)}
        lfs = None
        if path in repo.lfs:
            lfs = {"size": len(data), ("oid" if tree else "sha256"): hashlib.sha256(data).hexdigest(),
                   "pointerSize": 134}
        if tree:
            e.update(type="file", path=path, oid=git_blob_id(data))
            if lfs:
                e["lfs"] = lfs
        else:
            e.update(rfilename=path, blobId=git_blob_id(data))
            if lfs:
                e["lfs"] = lfs
        return e

    def content(self, path: str, data: bytes) -> bytes:
        return bytes(b ^ 0xFF for b in data[:16]) + data[16:] if path in self.corrupt else data


class Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status: int, code: str, message: str) -> None:
        self.send(status, json.dumps({"error": message}).encode(),
                  {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

    def repo(self, repo_id: str) -> Repo | None:
        hub = self.hub
        if repo_id in hub.missing or repo_id not in hub.repos:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        if repo_id in hub.gated:
            self.error(401, "GatedRepo", "Access to model is restricted: you must be authenticated")
            return None
        return hub.repos[repo_id]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            self.tree(m.group(1))
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/.+)?", path):
            self.info(m.group(1))
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self.resolve(m.group(1), m.group(3))
        else:
            self.error(404, "EntryNotFound", f"no route {path}")

    do_HEAD = do_GET

    def info(self, repo_id: str) -> None:
        if (repo := self.repo(repo_id)) is None:
            return
        body = {"id": repo_id, "modelId": repo_id, "sha": SHA, "private": False, "gated": False,
                "cardData": repo.card, "siblings": [self.hub.entry(repo, p, tree=False) for p in repo.files]}
        self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def tree(self, repo_id: str) -> None:
        if (repo := self.repo(repo_id)) is None:
            return
        body = [self.hub.entry(repo, p, tree=True) for p in repo.files]
        self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def resolve(self, repo_id: str, file: str) -> None:
        if (repo := self.repo(repo_id)) is None:
            return
        if file not in repo.files:
            self.error(404, "EntryNotFound", f"{file} does not exist")
            return
        data = repo.files[file]
        etag = hashlib.sha256(data).hexdigest() if file in repo.lfs else git_blob_id(data)
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if file in repo.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if self.command == "HEAD":  # the headers a GET would have, no body
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self.get_file(file, self.hub.content(file, data), headers)

    def get_file(self, file: str, data: bytes, headers: dict[str, str]) -> None:
        hub = self.hub
        hub.gets[file] = hub.gets.get(file, 0) + 1
        if file in hub.drop:
            self.close_connection = True
            self.connection.shutdown(2)  # no status line: the transfer is cut before its first byte
            return
        if file in hub.stall:
            hub.stalled.set()
            hub.release.wait(30)
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m.group(1))
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self.send(status, data[start:], headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-transfer (Ctrl-C, a test's dropped connection) is not an error here."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):
            super().handle_error(request, client_address)


def serve(hub: FakeHub) -> tuple[ThreadingHTTPServer, str]:
    """Start the fake Hub on an ephemeral loopback port; returns (server, endpoint URL). Call server.shutdown()."""
    handler = type("BoundHandler", (Handler,), {"hub": hub})
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
