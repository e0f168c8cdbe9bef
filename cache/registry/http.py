"""HTTP/1.1 for the registry client: pooled keep-alive connections on the standard library.

Why not urllib3 or requests: a cached pull is one manifest request, and its wall time is mostly
the process starting. urllib3 cost about 60 ms of import time (requests about 100 ms) on this
machine, against a few ms for http.client; everything the registry client needs on top (a pool
per origin, split connect/read timeouts, finishing or dropping a body) is this small module.
Retries, auth and redirects are the client's job, not this one's.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import select
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, BinaryIO, NamedTuple
from urllib.parse import unquote, urlsplit

from cache.errors import SourceError

if TYPE_CHECKING:
    import ssl  # loaded at run time only for the first HTTPS origin

# What a failed exchange raises: refused or reset connections, timeouts, TLS errors (all OSError),
# and malformed or cut responses (HTTPException, IncompleteRead among them).
TRANSIENT = (http.client.HTTPException, OSError)
SEND_BLOCK = 1 << 20  # bytes per send() of a file body (http.client's default is 8 KiB)
DRAIN_LIMIT = 64 * 1024  # a small unread body is read to keep the connection; a larger one drops it

Body = bytes | BinaryIO | None


class Timeout(NamedTuple):
    connect: float
    read: float


class Proxy(NamedTuple):
    host: str
    port: int
    headers: dict[str, str]  # Proxy-Authorization when the proxy URL carries user:password


def proxy_for(scheme: str, host: str, port: int, environ: Mapping[str, str] = os.environ) -> Proxy | None:
    """The proxy for one origin, from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case), by the
    rules docker and skopeo follow (Go's ProxyFromEnvironment): loopback hosts are never proxied;
    NO_PROXY lists hosts, domains (``example.com`` and ``.example.com`` both match subdomains),
    IP addresses and CIDR ranges, each optionally with ``:port``, or ``*`` for everything."""
    name = "https_proxy" if scheme == "https" else "http_proxy"
    url = environ.get(name) or environ.get(name.upper())
    if not url or is_loopback_host(host) or _bypassed(host, port, environ.get("no_proxy") or environ.get("NO_PROXY")):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise SourceError(f"proxy {url!r} in ${name.upper()} is not supported: give an http://HOST:PORT proxy")
    headers = {}
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, headers)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (a bare host name or address, no port)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bypassed(host: str, port: int, no_proxy: str | None) -> bool:
    for entry in (e.strip().lower() for e in (no_proxy or "").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _split_host_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in entry_host:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry_host, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry_host.lstrip(".")
        if host.lower() == domain or host.lower().endswith("." + domain):
            return True
    return False


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address or a CIDR range."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


class Response:
    """One response: status, headers, and a body to stream. Call :meth:`release` when done."""

    def __init__(self, raw: http.client.HTTPResponse, pool: Pool, origin: str, connection: http.client.HTTPConnection):
        self._raw = raw
        self._pool = pool
        self._origin = origin
        self._connection: http.client.HTTPConnection | None = connection
        self.status = raw.status
        self.headers = raw.headers  # case-insensitive .get()

    def read(self, amount: int) -> bytes:
        return self._raw.read(amount)

    def stream(self, chunk_size: int) -> Iterator[bytes]:
        """The body in chunks; raises IncompleteRead when it ends before its Content-Length."""
        while chunk := self._raw.read(chunk_size):
            yield chunk
        if self._raw.length:  # http.client returns b"" at a cut instead of raising
            raise http.client.IncompleteRead(b"", self._raw.length)

    def read_all(self, limit: int) -> bytes:
        """The whole (small) body; raises ValueError when it is larger than ``limit``."""
        body = bytearray()
        for chunk in self.stream(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise ValueError(f"body larger than {limit} bytes")
        return bytes(body)

    def release(self, drain: bool = False) -> None:
        """Give the connection back: kept alive when the body was read to its end (or ``drain``
        reads a small rest), closed otherwise so that no unread bytes precede the next response."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._raw.length == 0 and not self._raw.chunked:
            self._raw.close()  # nothing left to read (a HEAD, an empty body): the connection is reusable
        if drain and not self._raw.isclosed():
            try:
                self.read_all(DRAIN_LIMIT)
            except (ValueError, *TRANSIENT):
                pass
        if not self._raw.isclosed():
            self._raw.close()
            connection.close()
        self._pool.put(self._origin, connection)


class Pool:
    """Idle keep-alive connections per origin (scheme://host:port); thread-safe."""

    def __init__(self, *, max_idle: int, timeout: Timeout, verify_tls: bool = True) -> None:
        self._max_idle = max_idle
        self._timeout = timeout
        self._verify_tls = verify_tls
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._proxies: dict[str, Proxy | None] = {}
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None

    def request(self, method: str, url: str, headers: dict[str, str], body: Body = None) -> Response:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = self._proxy(origin)
        if proxy is not None and parts.scheme == "http":  # a plain-HTTP proxy takes the whole URL
            target, headers = origin + target, {**headers, **proxy.headers}
        connection, reused = self._take(origin)
        try:
            raw = self._exchange(connection, method, target, headers, body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            if not reused:
                raise
            # The server closed the idle connection just as we used it: once more on a new one.
            raw = self._exchange(connection, method, target, headers, body)
        except BaseException:
            connection.close()
            raise
        return Response(raw, self, origin, connection)

    def _exchange(
        self, connection: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str], body: Body
    ) -> http.client.HTTPResponse:
        if connection.sock is None:  # new, or closed after the last response
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(self._timeout.read)
        if hasattr(body, "seek"):
            body.seek(0)  # type: ignore[union-attr]
        connection.request(method, target, body=body, headers=headers)
        return connection.getresponse()

    def _take(self, origin: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if _still_open(connection):
                    return connection, True
                connection.close()
        return self._new(origin), False

    def put(self, origin: str, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._max_idle:
                idle.append(connection)
                return
        connection.close()

    def _proxy(self, origin: str) -> Proxy | None:
        """The proxy an origin goes through (looked up once per origin)."""
        with self._lock:
            if origin in self._proxies:
                return self._proxies[origin]
        parts = urlsplit(origin)
        proxy = proxy_for(parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        with self._lock:
            self._proxies[origin] = proxy
        return proxy

    def _new(self, origin: str) -> http.client.HTTPConnection:
        scheme, _, netloc = origin.partition("://")
        proxy = self._proxy(origin)
        address = f"{proxy.host}:{proxy.port}" if proxy else netloc
        if scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                address, timeout=self._timeout.connect, context=self._tls(), blocksize=SEND_BLOCK
            )
            if proxy is not None:  # CONNECT through the proxy; TLS runs end to end with the registry
                connection.set_tunnel(netloc, headers=proxy.headers)
            return connection
        return http.client.HTTPConnection(address, timeout=self._timeout.connect, blocksize=SEND_BLOCK)

    def _tls(self) -> ssl.SSLContext:
        """One TLS context for the pool, made on the first HTTPS origin (loading CAs takes time)."""
        with self._lock:
            if self._tls_context is None:
                import ssl

                context = ssl.create_default_context()
                if not self._verify_tls:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._tls_context = context
            return self._tls_context

    def close(self) -> None:
        with self._lock:
            connections = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """An idle socket with something to read has been closed by the server (or sent junk)."""
    if connection.sock is None:
        return True  # http.client reconnects on the next request
    try:
        readable, _, _ = select.select([connection.sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
