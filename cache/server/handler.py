"""HTTP for the distribution API: routing, request bodies, and responses (files via sendfile).

Handlers stay small: each route turns a request into store calls (content.py, uploads.py,
upstream.py) and a response. Every failure is a :class:`RegistryError` answered as the spec's JSON;
anything unexpected is logged and answered as UNKNOWN (500) without a traceback; a full disk is 507.

A handler object answers one request (the listener in listener.py keeps the connection between
requests), counts it in the server's metrics and writes its access-log line. A small response
leaves in one send.

Nothing from the client is trusted: the body's framing is checked before anything else (bad
framing closes the connection), every header written goes through :func:`check_header` (no
CR/LF, nothing but visible ASCII and spaces), and client text in a log line is escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase
from typing import TYPE_CHECKING, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from cache.errors import BlobNotFound
from cache.model.digest import Digest
from cache.model.manifests import MAX_MANIFEST_BYTES, OCI_INDEX
from cache.server import content, deletes
from cache.server.auth import Unauthorized
from cache.server.errors import RegistryError, disk_full_error
from cache.server.names import Repository, normalise_registry, resolve
from cache.server.referrers import attachment_tag, referrers_index
from cache.server.uploads import put_manifest
from cache.store.blobstore import DiskFull, disk_full
from cache.store.folder import UnsafeFile
from cache.view.routes import answer as view_answer

if TYPE_CHECKING:
    from cache.server import RegistryServer

READ_CHUNK = 1 << 20
SENDFILE_MAX = 1 << 30
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_LENGTH = re.compile(r"[0-9]{1,18}")  # more digits than any disk holds is an attack, not a blob
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_CONTENT_RANGE = re.compile(r"\s*([0-9]{1,18})-([0-9]{1,18})\s*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # visible ASCII and spaces: no CR, LF or other controls


class UnsafeHeader(Exception):
    """A response header that could split the response or confuse a client; never sent."""


def check_header(name: str, value: str) -> None:
    """The one guard every response header passes (RegistryHandler.send_header calls it)."""
    if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
        raise UnsafeHeader(f"refused to send header {name[:40]!r}: {value[:80]!r}")


def escaped(text: str) -> str:
    """Client text made safe for a log line: control and non-ASCII characters as escapes."""
    return text.encode("unicode_escape").decode("ascii")


def access_line(client: str, user: str, request: str, status: int, sent: int, seconds: float, agent: str) -> str:
    """One request as registries log it (the combined log format, and the time taken):
    ``127.0.0.1 - alice [2025-01-31T12:00:00Z] "GET /v2/ HTTP/1.1" 200 2 0.001s "curl/8.0"``.
    Client text is escaped, quotes included, so a line is one line and its fields stay apart."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return (f'{client} - {_quoted(user) or "-"} [{when}] "{_quoted(request)}" {status} {sent} {seconds:.3f}s '
            f'"{_quoted(agent)}"')


def _quoted(text: str) -> str:
    return escaped(text).replace('"', "\\x22") if text else ""


class _Writer:
    """The handler's wfile: sendall per write, or held and sent as one piece (no small second send)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> int:
        if self._held is not None:
            self._held.append(bytes(data))
        else:
            self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held = []
        try:
            yield
        finally:
            pieces, self._held = self._held, None
        self._sock.sendall(b"".join(pieces))

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/v2/?"), "base"),
    (re.compile(r"/v2/_catalog"), "catalog"),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), "tags"),
    (re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"), "referrers"),
    (re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"), "manifest"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"), "upload_start"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[^/]+)"), "upload"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"), "blob"),
    (re.compile(r"/metrics"), "metrics"),
    (re.compile(r"/|/view/.+"), "view"),  # the web view (cache/view): read like a pull
]
_METHODS = {
    "base": ("GET", "HEAD"), "catalog": ("GET",), "tags": ("GET",), "referrers": ("GET",),
    "manifest": ("GET", "HEAD", "PUT", "DELETE"), "upload_start": ("POST",),
    "upload": ("GET", "PATCH", "PUT", "DELETE"), "blob": ("GET", "HEAD", "DELETE"), "metrics": ("GET",),
    "view": ("GET", "HEAD"),
}
_DELETE = {("manifest", "DELETE"), ("blob", "DELETE")}  # with --allow-delete (which needs --allow-push)
_PUSH = {("manifest", "PUT"), ("upload_start", "POST"), ("upload", "GET"), ("upload", "PATCH"),
         ("upload", "PUT"), ("upload", "DELETE"), *_DELETE}


class RegistryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients fetch many blobs over one connection
    server_version = "layerhoard"
    server: RegistryServer

    # -- dispatch ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- one request per handler: the listener holds the connection between requests ---------------
    def setup(self) -> None:
        self.connection = self.request.sock  # a listener.Connection; its worker set the read timeout
        self.rfile = cast(BufferedIOBase, self.request)  # the head is in its buffer already
        self._writer = _Writer(self.connection)
        self.wfile = cast(BufferedIOBase, self._writer)

    def handle(self) -> None:
        self._started = time.monotonic()
        self._status, self._sent, self._route_name = 0, 0, "none"
        self._cache_result: tuple[str, str] | None = None
        self.close_connection = True
        self.handle_one_request()
        if self._status:
            self._record()

    def finish(self) -> None:
        """Nothing to close: the connection goes back to the listener, or the listener closes it."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """http.server calls this with each status it sends: kept for the access log and metrics."""
        self._status = int(code) if isinstance(code, int) else 0

    def _record(self) -> None:
        metrics = self.server.metrics
        metrics.request(self._route_name, self.command or "-", self._status, self._sent)
        if self._cache_result is not None:
            metrics.cache(*self._cache_result)
        if self.server.access_log is not None:
            agent = self.headers.get("User-Agent", "") if self.headers else ""
            self.server.access_log(access_line(self.client_address[0], str(getattr(self, "user", "") or ""),
                                               self.requestline, self._status, self._sent,
                                               time.monotonic() - self._started, agent))

    def _cache(self, kind: str, result: str) -> None:
        """Where a blob or manifest came from; a fetch upstream stays the answer once it is."""
        if self._cache_result is None or self._cache_result[1] != "upstream":
            self._cache_result = (kind, result)

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        self._extra: dict[str, str] = {}
        self._framing: int | None = None  # unknown until read: a response now ends the connection
        try:
            self._framing = self._read_framing()  # Content-Length, or None for chunked
        except RegistryError as error:
            self.close_connection = True  # where this body ends is unknown: nothing more on this connection
            self._error(error)
            return
        try:
            self._authorize(method)
            self._route(method)
        except RegistryError as error:
            self._error(error)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # a bug or an I/O failure: log it, answer without a traceback
            self._failed(error)
        if not self._body_read and self._framing != 0:
            self.close_connection = True  # the unread (or unframed) body would be taken for the next request

    def _authorize(self, method: str) -> None:
        """The one authentication check, before routing: no credentials, no answer (auth.py)."""
        if self.server.auth is None:
            return
        try:
            self.user = self.server.auth.check(method, self.path, self.headers.get("Authorization"))
        except Unauthorized as error:
            self._extra.update(error.headers)  # the challenge: clients send credentials once they see it
            raise

    def _route(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
        except ValueError:  # "//[x" and the like
            raise RegistryError("NAME_INVALID", "malformed request target") from None
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        route, params = _match(url.path)
        self._route_name = route
        if method not in _METHODS[route]:
            raise RegistryError("UNSUPPORTED", f"{method} is not allowed here", {"allowed": list(_METHODS[route])})
        if (route, method) in _DELETE and not self.server.allow_delete:
            raise RegistryError("UNSUPPORTED", "deletes are off here; start serve with --allow-delete")
        if (route, method) in _PUSH and not self.server.allow_push:
            raise RegistryError("UNSUPPORTED", "this server is read-only; start it with --allow-push")
        ns = self.query.get("ns")
        self.registry = normalise_registry(ns) if ns else self.server.default_registry
        if ns:
            self._extra["OCI-Namespace"] = ns  # checked by normalise_registry just above
        repo = resolve(params["name"], self.registry) if "name" in params else None
        handler: Callable[..., None] = getattr(self, f"_{route}_{method.lower()}", None) or getattr(self, f"_{route}")
        handler(method, repo, params)

    def _failed(self, error: Exception) -> None:
        """One log line (always shown) and a 500, or a 507 when the cache's disk is full."""
        where = f"{self.command} {escaped(self.path[:300])}"
        if isinstance(error, DiskFull) or disk_full(error):
            self.server.warn(f"error: {where}: the cache's disk is full ({self.server.store.root}); answered 507")
            self._error(disk_full_error())
            return
        self.server.warn(f"error: {where}: {type(error).__name__}: {escaped(str(error))}")
        self._error(RegistryError("UNKNOWN", "internal error"))

    # -- read side -----------------------------------------------------------------------------
    def _base(self, method: str, repo: None, params: dict[str, str]) -> None:
        self._send(200, b"{}", {"Content-Type": "application/json"}, method == "HEAD")

    def _catalog(self, method: str, repo: None, params: dict[str, str]) -> None:
        names = content.catalog(self.server.store, self.registry)
        shown, more = content.page(names, self.query.get("n"), self.query.get("last"))
        self._json({"repositories": shown}, self._next_link("/v2/_catalog", shown, more))

    def _tags(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        tags = content.tags(self.server.store, repo)
        if not tags:
            raise RegistryError("NAME_UNKNOWN", "repository name not known to registry", {"name": params["name"]})
        shown, more = content.page(tags, self.query.get("n"), self.query.get("last"))
        self._json({"name": params["name"], "tags": shown},
                   self._next_link(f"/v2/{params['name']}/tags/list", shown, more))

    def _manifest(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        store, upstreams = self.server.store, self.server.upstreams
        reference = content.lookup_reference(params["reference"])
        pinned = isinstance(reference, Digest)
        attached = None if pinned or content.tagged_entry(store, repo, str(reference)) else \
            attachment_tag(store, str(reference))  # a cosign or tag-schema tag no stored name holds
        if attached is not None:
            self._send_manifest(attached, method)
            return
        digest = reference if isinstance(reference, Digest) else self._tag_digest(repo, reference, params["name"])
        body = None if (repo, digest) in self.server.deleted else content.stored_manifest(store, digest)
        self._cache("manifest", "hit")
        if body is None and pinned and upstreams is not None and upstreams.covers(repo):
            upstreams.manifest(repo, digest)
            body = content.stored_manifest(store, digest)
            self._cache("manifest", "upstream")
        if body is None:
            self._cache_result = ("manifest", "miss")
            raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", {"digest": str(digest)})
        body = content.negotiate(store, body, content.accepted_types(self.headers.get_all("Accept") or []), pinned)
        self._send_manifest(body, method)

    def _send_manifest(self, body: content.ManifestBody, method: str) -> None:
        self._send(200, body.raw, {"Content-Type": body.media_type, "Docker-Content-Digest": str(body.digest),
                                   "ETag": f'"{body.digest}"'}, method == "HEAD")

    def _referrers(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        artifact_type = self.query.get("artifactType")
        body = referrers_index(self.server.store, content.checked_digest(params["digest"]), artifact_type)
        headers = {"Content-Type": OCI_INDEX}
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        self._send(200, body, headers)

    def _tag_digest(self, repo: Repository, tag: str, name: str) -> Digest:
        """What a tag names: upstream first when one covers the registry, else (or on failure) the cache."""
        store, upstreams = self.server.store, self.server.upstreams
        if upstreams is not None and upstreams.covers(repo):
            try:
                return upstreams.manifest(repo, tag)
            except RegistryError as error:
                self.server.log(f"upstream: {escaped(error.message)}; answering from the cache")
        digest = content.tagged_digest(store, repo, tag)
        if digest is not None:
            return digest
        self._cache_result = ("manifest", "miss")
        if content.known_name(store, repo):
            raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", {"tag": tag})
        raise RegistryError("NAME_UNKNOWN", "repository name not known to registry", {"name": name})

    def _blob(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        digest = content.checked_digest(params["digest"])
        try:
            handle = self.server.store.open(digest)
        except BlobNotFound:
            upstreams = self.server.upstreams
            if upstreams is None or not upstreams.covers(repo):
                self._cache("blob", "miss")
                raise RegistryError("BLOB_UNKNOWN", "blob unknown to registry", {"digest": str(digest)}) from None
            self._cache("blob", "upstream")
            self._blob_miss(method, repo, digest)
            return
        self._cache("blob", "hit")
        with handle:
            size = os.fstat(handle.fileno()).st_size
            first, last = self._blob_headers(digest, size, method)
            if method == "GET":
                self._sendfile(handle, first, last - first + 1)

    def _blob_headers(self, digest: Digest, size: int, method: str) -> tuple[int, int]:
        """Send the status line and headers of a blob response; returns the byte span to send."""
        span = content.byte_range(self.headers.get("Range"), size)
        first, last = span or (0, size - 1)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": str(digest),
                   "Accept-Ranges": "bytes", "ETag": f'"{digest}"', "Content-Length": str(last - first + 1),
                   "Cache-Control": "max-age=31536000"}
        if span:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._head(206 if span else 200, headers)
        return first, last

    def _blob_miss(self, method: str, repo: Repository, digest: Digest) -> None:
        upstreams = self.server.upstreams
        assert upstreams is not None
        if method == "HEAD":
            self._blob_headers(digest, upstreams.blob_size(repo, digest), method)
            return
        flight = upstreams.blob(repo, digest)
        if flight.path is None or flight.size is None:
            flight.wait_finished()  # stored by someone else, or no length to announce: serve the result
            self._blob(method, repo, {"digest": str(digest)})
            return
        try:  # through the ingest folder: a link a member put in the spool's place is refused
            handle: BinaryIO = os.fdopen(self.server.store.ingest_folder.open(flight.path.name), "rb")
        except (FileNotFoundError, UnsafeFile):  # committed meanwhile (it is in blobs/ now), or planted
            self._blob(method, repo, {"digest": str(digest)})
            return
        with handle:
            first, last = self._blob_headers(digest, flight.size, method)
            position = first
            try:
                while position <= last:
                    available = min(flight.readable_beyond(position), last + 1)
                    self._sendfile(handle, position, available - position)
                    position = available
            except RegistryError:
                self.close_connection = True  # headers are out: a cut stream is the only signal left

    def _metrics(self, method: str, repo: None, params: dict[str, str]) -> None:
        self._send(200, self.server.metrics_text().encode(), {"Content-Type": METRICS_TYPE})

    def _view(self, method: str, repo: None, params: dict[str, str]) -> None:
        response = view_answer(self.server.store, urlsplit(self.path).path, self.query, metrics=True)
        self._send(response.status, response.body, response.all_headers(), method == "HEAD")

    # -- push side -----------------------------------------------------------------------------
    def _upload_start(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        store = self.server.store
        mount = self.query.get("mount")
        if mount:
            digest = content.checked_digest(mount)
            if store.has(digest):
                self._created(f"/v2/{params['name']}/blobs/{digest}", digest)
                return
        if "digest" in self.query:  # monolithic: the whole blob in this request
            digest = content.checked_digest(self.query["digest"])
            self.server.uploads.spool(repo, digest, self._body(), self._framing)
            self._created(f"/v2/{params['name']}/blobs/{digest}", digest)
            return
        self._drain()
        upload = self.server.uploads.start(repo)
        self._upload_status(202, params["name"], upload.id, 0)

    def _upload_patch(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        upload = self.server.uploads.get(repo, params["upload"])
        match = _CONTENT_RANGE.fullmatch(self.headers.get("Content-Range", ""))
        size = self.server.uploads.append(upload, self._body(), int(match.group(1)) if match else None, self._framing)
        self._upload_status(202, params["name"], upload.id, size)

    def _upload_put(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        upload = self.server.uploads.get(repo, params["upload"])
        digest = content.checked_digest(self.query.get("digest", ""))
        self.server.uploads.finish(upload, digest, self._body(), self._framing)
        self._created(f"/v2/{params['name']}/blobs/{digest}", digest)

    def _upload_get(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        upload = self.server.uploads.get(repo, params["upload"])
        self._upload_status(204, params["name"], upload.id, upload.size)

    def _upload_delete(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        self.server.uploads.cancel(self.server.uploads.get(repo, params["upload"]))
        self._send(204, b"", {})

    def _manifest_put(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        reference = content.parse_reference(params["reference"])
        raw = b"".join(self._body(limit=MAX_MANIFEST_BYTES))
        pushed = put_manifest(self.server.store, repo, reference, raw, self.headers.get("Content-Type", ""))
        self.server.deleted.discard(repo, pushed.digest)
        if pushed.subject is not None:
            self._extra["OCI-Subject"] = str(pushed.subject)
        self._created(f"/v2/{params['name']}/manifests/{pushed.digest}", pushed.digest)

    def _manifest_delete(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        reference = content.lookup_reference(params["reference"])
        if isinstance(reference, Digest):
            deletes.delete_manifest(self.server.store, repo, reference, self.server.deleted)
        else:
            deletes.delete_tag(self.server.store, repo, reference)
        self._send(202, b"", {})

    def _blob_delete(self, method: str, repo: Repository, params: dict[str, str]) -> None:
        deletes.delete_blob(self.server.store, content.checked_digest(params["digest"]))
        self._send(202, b"", {})

    def _upload_status(self, status: int, name: str, upload_id: str, size: int) -> None:
        self._send(status, b"", {"Location": f"/v2/{name}/blobs/uploads/{upload_id}", "Docker-Upload-UUID": upload_id,
                                 "Range": f"0-{max(size - 1, 0)}"})

    def _created(self, location: str, digest: Digest) -> None:
        self._send(201, b"", {"Location": location, "Docker-Content-Digest": str(digest)})

    # -- request bodies ------------------------------------------------------------------------
    def _read_framing(self) -> int | None:
        """The body's length (0 when none), or None when chunked. Anything ambiguous is refused,
        and the connection closed: where this request's body ends is unknown (request smuggling)."""
        codings = self.headers.get_all("Transfer-Encoding") or []
        lengths = [text.strip() for text in self.headers.get_all("Content-Length") or []]
        if codings:
            if lengths or [coding.strip().lower() for coding in codings] != ["chunked"]:
                raise RegistryError("BLOB_UPLOAD_INVALID", "only Transfer-Encoding: chunked, without Content-Length, "
                                    "is supported")
            return None
        if not lengths:
            return 0
        if len(set(lengths)) > 1 or not _LENGTH.fullmatch(lengths[0]):
            raise RegistryError("SIZE_INVALID", "invalid Content-Length: one decimal byte count expected")
        return int(lengths[0])

    def _body(self, limit: int | None = None) -> Iterator[bytes]:
        """The request body in pieces (Content-Length or chunked); more than ``limit`` is refused."""
        pieces = self._chunked() if self._framing is None else self._sized(self._framing)
        taken = 0
        for piece in pieces:
            taken += len(piece)
            if limit is not None and taken > limit:
                raise RegistryError("SIZE_INVALID", f"body larger than {limit} bytes", status=413)
            yield piece
        self._body_read = True

    def _sized(self, length: int) -> Iterator[bytes]:
        while length > 0:
            piece = self.rfile.read(min(length, READ_CHUNK))
            if not piece:
                raise RegistryError("BLOB_UPLOAD_INVALID", "the request body ended early")
            length -= len(piece)
            yield piece

    def _chunked(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(1026)
            size_text = line.split(b";")[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise RegistryError("BLOB_UPLOAD_INVALID", "malformed chunked body")
            size = int(size_text, 16)
            if size == 0:
                while self.rfile.readline(1026).strip():
                    pass  # trailers
                return
            yield from self._sized(size)
            self.rfile.readline(3)  # the CRLF after each chunk

    def _drain(self) -> None:
        for _ in self._body():
            pass

    # -- responses -----------------------------------------------------------------------------
    def _head(self, status: int, headers: dict[str, str]) -> None:
        every = {**API_VERSION, **self._extra, **headers}
        if not self._body_read and self._framing != 0:
            # the unread body ends this connection: said in the response, or a client sends its next
            # request on it and meets EOF (Go's client does not retry a POST then)
            every["Connection"] = "close"
        for key, value in every.items():
            check_header(key, value)  # all of them before the first byte: no half-written response
        self.send_response(status)
        for key, value in every.items():
            self.send_header(key, value)
        self.end_headers()

    def send_header(self, keyword: str, value: str) -> None:
        """Every header, ours and http.server's own, passes the one guard."""
        check_header(keyword, str(value))
        super().send_header(keyword, value)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head_only: bool = False) -> None:
        with self._writer.held():  # head and body in one send
            self._head(status, {**headers, "Content-Length": str(len(body))})
            if body and not head_only:
                self.wfile.write(body)
                self._sent += len(body)

    def _json(self, document: object, headers: dict[str, str]) -> None:
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json", **headers})

    def _error(self, error: RegistryError) -> None:
        headers = {"Content-Type": "application/json"}
        if error.code == "RANGE_INVALID" and isinstance(error.detail, dict) and "size" in error.detail:
            headers["Content-Range"] = f"bytes */{error.detail['size']}"
        try:
            self._send(error.status, error.body(), headers, self.command == "HEAD")
        except UnsafeHeader:  # only _extra can hold a value from the request: answer without it
            self._extra = {}
            self._send(error.status, error.body(), headers, self.command == "HEAD")

    def _next_link(self, path: str, shown: list[str], more: bool) -> dict[str, str]:
        if not more or not shown:
            return {}
        return {"Link": f'<{path}?n={len(shown)}&last={shown[-1]}>; rel="next"'}

    def _sendfile(self, handle: BinaryIO, offset: int, count: int) -> None:
        """Send bytes of a file without passing them through Python (sendfile where available)."""
        sock = self.connection
        if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
            with _blocking_sends(sock):
                self._sendfile_blocking(sock, handle, offset, count)
            return
        while count > 0:  # TLS: Python encrypts, in chunks
            sent = sock.sendfile(handle, offset, min(count, SENDFILE_MAX))  # type: ignore[arg-type]
            if sent == 0:
                raise BrokenPipeError("file ended early")
            offset += sent
            count -= sent
            self._sent += sent

    def _sendfile_blocking(self, sock: socket.socket, handle: BinaryIO, offset: int, count: int) -> None:
        while count > 0:
            try:
                sent = os.sendfile(sock.fileno(), handle.fileno(), offset, min(count, SENDFILE_MAX))
            except BlockingIOError:  # SO_SNDTIMEO passed with nothing sent: the client stalled
                raise TimeoutError("the client stopped reading") from None
            if sent == 0:
                raise BrokenPipeError("file ended early")
            offset += sent
            count -= sent
            self._sent += sent

    def log_message(self, format: str, *args: object) -> None:
        """http.server's lines (the request line, its own errors) hold client text: escaped."""
        self.server.log(f"{self.address_string()} {escaped(format % args)}")


@contextlib.contextmanager
def _blocking_sends(sock: socket.socket) -> Iterator[None]:
    """The socket in blocking mode, with the kernel's send timeout standing in for Python's, while
    a blob is sent: one sendfile call then moves as much as the client takes, where a socket with a
    Python timeout (non-blocking underneath) made one sendfile and one poll per socket buffer
    (about 4% of the throughput of 8 clients fetching one large blob)."""
    timeout = sock.gettimeout()
    if timeout is None:
        yield
        return
    seconds = int(timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000)))
    try:
        yield
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
        sock.settimeout(timeout)


def _match(path: str) -> tuple[str, dict[str, str]]:
    for pattern, route in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return route, match.groupdict()
    raise RegistryError("NAME_UNKNOWN", "no such endpoint", {"path": path[:200]}, status=404)
