"""HTTP/1.1 for the registry client: pooled keep-alive connections on the standard library.

Why not urllib3 or requests: a cached pull is one manifest request, and its wall time is mostly
the process starting. urllib3 cost about 60 ms of import time (requests about 100 ms) on this
machine, against a few ms for http.client; everything the registry client needs on top (a pool
per origin, split connect/read timeouts, finishing or dropping a body) is this small module.
Retries, auth and redirects are the client's job, not this one's.
"""

from __future__ import annotations

import http.client
import select
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, NamedTuple
from urllib.parse import urlsplit

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
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None

    def request(self, method: str, url: str, headers: dict[str, str], body: Body = None) -> Response:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
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

    def _new(self, origin: str) -> http.client.HTTPConnection:
        scheme, _, netloc = origin.partition("://")
        if scheme == "https":
            return http.client.HTTPSConnection(
                netloc, timeout=self._timeout.connect, context=self._tls(), blocksize=SEND_BLOCK
            )
        return http.client.HTTPConnection(netloc, timeout=self._timeout.connect, blocksize=SEND_BLOCK)

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
