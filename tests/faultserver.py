"""A small misbehaving registry on loopback, for faults a real registry will not produce.

It serves one repository from an in-memory image and can be told, per path, to send wrong bytes,
cut a body short, answer 500 or 429 first, require a Bearer token, or redirect blobs elsewhere.
Every request is recorded with its headers so tests can check what the client sent.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Faults:
    wrong_bytes: set[str] = field(default_factory=set)  # blob digests answered with other bytes
    cut_after: dict[str, int] = field(default_factory=dict)  # digest -> bytes sent before the cut (once)
    ignore_range: bool = False
    fail_first: dict[str, list[int]] = field(default_factory=dict)  # path suffix -> statuses to send first
    retry_after: str = "1"
    token_required: bool = False
    basic_required: str | None = None  # the exact Authorization header a Basic registry accepts
    redirect_blobs_to: str | None = None  # base URL of another server that holds the blobs
    drip: dict[str, int] = field(default_factory=dict)  # digest -> requests answered one byte per drip_interval
    drip_interval: float = 0.1
    html_then_cut: dict[str, int] = field(default_factory=dict)  # digest -> requests answered 200 bytes of HTML, cut


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on purpose (oversized answers) are expected here


class FaultRegistry:
    def __init__(self, repository: str, manifests: dict[str, tuple[bytes, str]], blobs: dict[str, bytes]) -> None:
        self.repository = repository
        self.manifests = manifests  # reference (tag or digest) -> (bytes, content type)
        self.blobs = blobs
        self.faults = Faults()
        self.seen: list[Seen] = []
        self.tokens_issued: list[str] = []
        self.stopping = threading.Event()  # ends the drips when the server stops
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"

    @contextmanager
    def running(self) -> Iterator[FaultRegistry]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self._server.shutdown()
            self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                registry.seen.append(Seen("GET", self.path, {k.title(): v for k, v in self.headers.items()}))
                registry.handle(self)

        return Handler

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        for suffix, statuses in self.faults.fail_first.items():
            if path.endswith(suffix) and statuses:
                status = statuses.pop(0)
                headers = {"Retry-After": self.faults.retry_after} if status == 429 else {}
                self._send(handler, status, b'{"errors":[]}', headers)
                return
        if path.startswith("/token"):
            scope = re.search(r"scope=([^&]+)", path)
            token = f"token-{len(self.tokens_issued)}"
            self.tokens_issued.append(unquote(scope.group(1)) if scope else "")
            self._send(handler, 200, f'{{"token": "{token}"}}'.encode())
            return
        if self.faults.basic_required and handler.headers.get("Authorization") != self.faults.basic_required:
            self._send(handler, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="t"'})
            return
        if self.faults.token_required and not handler.headers.get("Authorization", "").startswith("Bearer token-"):
            challenge = (f'Bearer realm="{self.url}/token",service="fault",'
                         f'scope="repository:{self.repository}:pull"')
            self._send(handler, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
            return
        match = re.fullmatch(rf"/v2/{re.escape(self.repository)}/(manifests|blobs)/([^?]+)", path)
        if not match:
            self._send(handler, 200 if path == "/v2/" else 404, b"{}")
            return
        kind, reference = match.groups()
        if kind == "manifests":
            if reference not in self.manifests:
                self._send(handler, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return
            body, content_type = self.manifests[reference]
            self._send(handler, 200, body, {"Content-Type": content_type})
            return
        self.send_blob(handler, reference)

    def send_blob(self, handler: BaseHTTPRequestHandler, digest: str) -> None:
        if self.faults.redirect_blobs_to:
            location = f"{self.faults.redirect_blobs_to}/v2/{self.repository}/blobs/{digest}"
            self._send(handler, 307, b"", {"Location": location})
            return
        if digest not in self.blobs:
            self._send(handler, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return
        body = self.blobs[digest]
        if digest in self.faults.wrong_bytes:
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        start = 0
        range_header = handler.headers.get("Range")
        if range_header and not self.faults.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))  # type: ignore[union-attr]
        if self._take(self.faults.html_then_cut, digest):
            self._send_cut(handler, len(body), b"<html><body>" + b"Service Unavailable. " * 9 + b"</body></html>")
            return
        if self._take(self.faults.drip, digest):
            self._drip(handler, body)
            return
        if digest in self.faults.cut_after:
            cut = self.faults.cut_after.pop(digest)
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if start:
            part = body[start:]
            self._send(handler, 206, part, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            self._send(handler, 200, body)

    @staticmethod
    def _take(counts: dict[str, int], digest: str) -> bool:
        """Whether this request of ``digest`` gets the fault (counting it down)."""
        if counts.get(digest, 0) <= 0:
            return False
        counts[digest] -= 1
        return True

    @staticmethod
    def _send_cut(handler: BaseHTTPRequestHandler, length: int, sent: bytes) -> None:
        """A 200 that promises ``length`` bytes, sends ``sent`` (what a broken proxy's error page
        looks like) and closes the connection."""
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(sent[:200].ljust(200))
        handler.wfile.flush()
        handler.close_connection = True

    def _drip(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """The blob at one byte per drip_interval, until the client gives up or the server stops."""
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True
        for index in range(len(body)):
            if self.stopping.wait(self.faults.drip_interval):
                return
            try:
                handler.wfile.write(body[index:index + 1])
                handler.wfile.flush()
            except OSError:
                return  # the client hung up: what the floor is for
