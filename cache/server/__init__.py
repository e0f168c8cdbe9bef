"""``layerhoard serve``: the OCI Distribution API answered from the store.

    server = make_server(store, ServeOptions(listen="127.0.0.1:5050"))
    server.serve_forever()

Read side always; pushes with ``allow_push``; misses fetched from ``upstreams`` (pull-through).
Connections are held by one listener thread and requests run on a bounded pool of workers
(listener.py: idle and half-sent requests cost no thread); blob bodies leave through sendfile, so
Python touches headers and manifests only. Every request is counted (metrics.py, ``/metrics``) and,
with ``access_log``, logged in one line.
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cache.errors import LayerhoardError
from cache.model.refs import DEFAULT_REGISTRY
from cache.server.auth import Authenticator, check_listen
from cache.server.deletes import Deleted
from cache.server.handler import RegistryHandler
from cache.server.listener import Connection, Listener
from cache.server.metrics import Family, Metrics, StoreGauges
from cache.server.names import normalise_registry
from cache.server.uploads import DEFAULT_EXPIRY, DEFAULT_LIMIT, DEFAULT_MAX_SIZE, Uploads
from cache.server.upstream import Upstreams
from cache.store.blobstore import BlobStore

DEFAULT_LISTEN = "127.0.0.1:5050"


@dataclass
class ServeOptions:
    listen: str = DEFAULT_LISTEN
    default_registry: str = DEFAULT_REGISTRY
    upstreams: dict[str, str] = field(default_factory=dict)  # registry -> base URL
    allow_push: bool = False
    allow_delete: bool = False  # DELETE of tags, manifests and blobs (needs allow_push: the push role guards it)
    log: Callable[[str], None] | None = None  # request lines and details (-v)
    warn: Callable[[str], None] | None = None  # what an operator must see (a full disk, a bug); falls back to log
    read_timeout: float = 60.0  # seconds a client may stay silent mid-request before it is dropped
    upload_expiry: float = DEFAULT_EXPIRY  # seconds an upload session may stay idle
    max_uploads: int = DEFAULT_LIMIT  # upload sessions open at once; more get 429
    max_upload_size: int = DEFAULT_MAX_SIZE  # bytes one pushed blob may hold; more get 413
    access_log: Callable[[str], None] | None = None  # one line per request (the default; -q: None)
    workers: int = 64  # requests served at once; more wait for a worker, connections wait for free
    max_connections: int = 4096  # open at once (lowered to fit the file limit); more get 503
    header_timeout: float = 20.0  # seconds a request head may take to arrive
    idle_timeout: float = 120.0  # seconds a keep-alive connection may wait for its next request
    tls: ssl.SSLContext | None = None  # HTTPS (tls.server_context)
    auth: Authenticator | None = None  # basic auth and the push role (auth.py); None: no credentials asked
    insecure_listen: bool = False  # beyond loopback without TLS and auth: warn instead of refusing


class RegistryServer(Listener):
    def __init__(self, address: tuple[str, int], store: BlobStore, options: ServeOptions) -> None:
        self.store = store
        self.default_registry = normalise_registry(options.default_registry)
        self.allow_push = options.allow_push
        self.allow_delete = options.allow_delete
        self.deleted = Deleted()  # manifests deleted in one repository whose bytes other images keep
        self.auth = options.auth
        self.upstreams = Upstreams(store, options.upstreams, self._log_fetch) if options.upstreams else None
        self._log = options.log
        self._warn = options.warn or options.log
        self.access_log = options.access_log
        self.metrics = Metrics()
        self.store_gauges = StoreGauges(store)
        self.upstream_fetches: list[str] = []  # what went upstream, for tests and stats
        super().__init__(address, workers=options.workers, max_connections=options.max_connections,
                         header_timeout=options.header_timeout, idle_timeout=options.idle_timeout,
                         read_timeout=options.read_timeout)
        self.uploads = Uploads(store, options.upload_expiry, options.max_uploads,  # bound: start its sweeper
                               options.max_upload_size)
        self.tls_context = options.tls  # the listener does each connection's handshake (listener.py)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host if isinstance(host, str) else host.decode()
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls_context else 'http'}://{shown}:{port}"

    @property
    def host(self) -> str:
        return self.url.partition("://")[2]

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up or stalls mid-request is routine for a registry: one log line, not
        a traceback on stderr. Anything else is a bug worth the traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            self.log(f"client {client_address} went away: {error}")
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def serve_request(self, connection: Connection) -> bool:
        """One request on a worker (the listener has its head): True keeps the connection."""
        return not RegistryHandler(connection, connection.address, self).close_connection  # type: ignore[arg-type]

    def metrics_text(self) -> str:
        """``/metrics``: the request counters, gauges read from the listener and the uploads, and
        the cache's own figures (size, blobs, images, pulls by source)."""
        counts = dict(self.uploads.counts)
        return self.metrics.render([
            Family("layerhoard_uploads_total", "counter", "Blob uploads started, completed and expired.",
                   [({"event": event}, count) for event, count in counts.items()]),
            Family("layerhoard_open_connections", "gauge", "Client connections open now.",
                   [({}, self.open_connections)]),
            Family("layerhoard_refused_connections_total", "counter", "Connections refused (503) at the cap.",
                   [({}, self.refused_connections)]),
            *self.store_gauges.families(),
        ])

    def _log_fetch(self, what: str) -> None:
        self.upstream_fetches.append(what)
        self.metrics.upstream_fetch(what.split(" ", 1)[0].rstrip(":"))  # manifest, blob or failed
        self.log(f"upstream fetch: {what}")

    def server_close(self) -> None:
        super().server_close()
        self.uploads.close()  # our upload files go with us (a killed server's are gc's, unmarked)
        if self.upstreams is not None:
            self.upstreams.close()


class _RegistryServer6(RegistryServer):
    address_family = socket.AF_INET6


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise LayerhoardError(f"invalid --listen {text!r}: use HOST:PORT, like {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def make_server(store: BlobStore, options: ServeOptions | None = None) -> RegistryServer:
    """A bound server; call ``serve_forever()`` (and ``shutdown()`` from another thread to stop)."""
    options = options or ServeOptions()
    host, port = parse_listen(options.listen)
    warning = check_listen(options.listen, host, tls=options.tls is not None, auth=options.auth is not None,
                           allow_push=options.allow_push, insecure=options.insecure_listen)
    if warning is not None:
        (options.warn or stderr_log)(warning)
    kind = _RegistryServer6 if ":" in host else RegistryServer
    try:
        return kind((host, port), store, options)
    except OSError as error:
        raise LayerhoardError(f"cannot listen on {options.listen}: {error.strerror or error}") from None


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
