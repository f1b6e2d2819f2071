"""A stand-in for the Hugging Face hub on 127.0.0.1, answering what huggingface_hub 2.4's
``snapshot_download`` and ``HfApi.model_info`` ask (``HF_ENDPOINT`` points at it):

- ``GET /api/models/<repo>/revision/<revision>``: the commit a branch, tag or commit names, with
  the files of that commit and their sizes (``siblings``);
- ``GET /api/models/<repo>/tree/<commit>``: the files of the commit (one page);
- ``HEAD`` and ``GET /<repo>/resolve/<commit>/<file>``: the file, with ``X-Repo-Commit``, ``ETag``
  and ``Content-Length``; ``Range: bytes=N-`` answers 206 with the rest.

``cut[file] = n``: the next GET of that file sends its headers (the whole length) and then only
``n`` bytes before closing the connection, as a dropped connection does. ``token``: every request
needs ``Authorization: Bearer <token>`` (a gated repository), else 401. ``log`` records every
request as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: content}

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit of ``files`` and point ``branch`` at it; returns its hash."""
        digest = hashlib.sha1(b"".join(name.encode() + hashlib.sha1(data).digest()
                                       for name, data in sorted(files.items()))).hexdigest()
        self.commits[digest] = dict(files)
        self.refs[branch] = digest
        return digest

    def resolve(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.cut: dict[str, int] = {}
        self.token: str | None = None
        self.log: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub.answer(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, name: str) -> Repo:
        return self.repos.setdefault(name, Repo())

    @staticmethod
    def _send(handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False,
              length: int | None = None, send: int | None = None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        if not head:
            handler.wfile.write(body if send is None else body[:send])
            handler.wfile.flush()
        if send is not None:
            handler.close_connection = True

    def _error(self, handler, status: int, code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(handler, status, body, {"X-Error-Code": code, "X-Error-Message": message,
                                           "Content-Type": "application/json"}, head=head)

    def answer(self, handler, head: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.log.append((handler.command, path, handler.headers.get("Range")))
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(handler, 401, "GatedRepo", "Access to this model is restricted: log in", head)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        name = (api or resolve).group(1) if (api or resolve) else None
        if name not in self.repos:
            return self._error(handler, 404, "RepoNotFound", f"Repository {name} not found", head)
        repo = self.repos[name]
        commit = repo.resolve(api.group(3) if api else resolve.group(2))
        if commit is None:
            return self._error(handler, 404, "RevisionNotFound", "Invalid rev id", head)
        files = repo.commits[commit]
        if api and api.group(2) == "revision":
            body = {"id": name, "sha": commit, "siblings": [{"rfilename": p, "size": len(d)} for p, d in files.items()]}
            return self._send(handler, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        if api:
            body = [{"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for p, d in files.items()]
            return self._send(handler, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        filename = resolve.group(3)
        if filename not in files:
            return self._error(handler, 404, "EntryNotFound", f"{filename} does not exist", head)
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start = 0
        if (wanted := handler.headers.get("Range")) and (match := re.fullmatch(r"bytes=(\d+)-", wanted)):
            start = int(match.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = None if head else self.cut.pop(filename, None)
        self._send(handler, 206 if start else 200, data[start:], headers, head=head, send=cut)
