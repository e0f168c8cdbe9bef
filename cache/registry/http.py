"""HTTP/1.1 for the registry client: keep-alive connections per origin, on plain sockets.

Why not a library: a cached pull is one manifest request, and its wall time is mostly the
process starting. Importing http.client costs about 87 million instructions here (it loads the
email package to parse headers, and ssl), a quarter of a whole cached pull; urllib3 and requests
sit on top of it, and h11 costs half as much again as this module and socket together. The
registry protocol needs a small part of HTTP/1.1, which is what this module speaks:

- requests with a Host header, a byte-string or file body (sent with sendfile where it can),
  an explicit Content-Length;
- responses framed by Content-Length, chunked transfer coding, or the end of the connection;
  no body for HEAD, 1xx, 204 and 304; interim 1xx responses skipped;
- keep-alive unless the server says ``Connection: close`` (or speaks HTTP/1.0);
- TLS (ssl is imported on the first HTTPS origin only), proxies from the environment
  (:mod:`cache.registry.proxy`), CONNECT tunnels for HTTPS through a proxy.

Retries, auth and redirects are the client's job, not this one's.
"""

from __future__ import annotations

import io
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol
from urllib.parse import urlsplit

from cache.registry.proxy import Proxy, proxy_for

if TYPE_CHECKING:
    import ssl  # loaded at run time only for the first HTTPS origin

SEND_BLOCK = 1 << 20  # bytes per send of a file body where sendfile cannot be used (TLS)
DRAIN_LIMIT = 64 * 1024  # a small unread body is read to keep the connection; a larger one drops it
MAX_LINE = 64 * 1024  # a status line, header line or chunk-size line longer than this is refused
MAX_HEADERS = 200
_NO_BODY_STATUSES = frozenset({204, 304})

Body = bytes | BinaryIO | None


class HTTPError(Exception):
    """A response that broke HTTP/1.1 framing: malformed, or cut before its end."""


class IncompleteBody(HTTPError):
    """The connection ended before the whole body arrived (what did arrive was handed out)."""


class ProtocolError(HTTPError):
    """Something that is not an HTTP/1.x response where one was expected."""


class TooSlow(HTTPError):
    """A response that stayed under the speed floor for a whole window (what was read was handed out)."""


# What a failed exchange raises: refused or reset connections, timeouts and TLS errors (all
# OSError), and responses that break the framing. All are worth another try.
TRANSIENT = (HTTPError, OSError)


class _Lines(Protocol):
    """What response parsing reads from: a socket's file, buffered or not."""

    def readline(self, size: int = -1, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...


class Timeout(NamedTuple):
    connect: float
    read: float | None  # None: wait as long as it takes (a daemon's save stream)


class SpeedFloor(NamedTuple):
    """curl's --speed-limit/--speed-time: a response that, once its first byte came, brings fewer
    than ``rate`` bytes a second over ``seconds`` is abandoned. A rate of 0 turns it off."""

    rate: int  # bytes per second
    seconds: float

    def __str__(self) -> str:
        from cache.units import format_size

        return f"{format_size(self.rate)}/s over {self.seconds:g} s"


class _FlooredSocket(io.RawIOBase):
    """A socket as the raw stream under a response's buffered reader, holding each response to a
    speed floor. A read timeout alone fires only after that much silence, so a server that sends a
    byte a second keeps a transfer alive for ever; here every recv waits at most until the current
    window ends, and a window that ends with fewer than rate x seconds bytes raises TooSlow. The
    first window opens with the first byte: time to first byte and an upload's wait for its answer
    stay under the read timeout only."""

    def __init__(self, sock: socket.socket, floor: SpeedFloor, read_timeout: float | None) -> None:
        super().__init__()
        self._sock = sock
        self._floor = floor
        self._read_timeout = read_timeout
        self.restart()

    def restart(self) -> None:
        """A request was sent: its response starts with no window and a fresh read timeout."""
        self._window_start: float | None = None
        self._window_bytes = 0
        self._last_data = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            now = time.monotonic()
            self._check(now)
            self._sock.settimeout(self._wait(now))
            try:
                got = self._sock.recv_into(buffer)
            except TimeoutError:
                continue  # a window ended (or the read timeout did): _check and _wait decide
            now = time.monotonic()
            if self._window_start is None:
                self._window_start = now
            self._window_bytes += got
            self._last_data = now
            return got

    def _check(self, now: float) -> None:
        if self._window_start is None or now - self._window_start < self._floor.seconds:
            return
        if self._window_bytes < self._floor.rate * self._floor.seconds:
            raise TooSlow(f"under the speed floor of {self._floor}; see --min-speed or LAYERHOARD_MIN_SPEED")
        self._window_start, self._window_bytes = now, 0

    def _wait(self, now: float) -> float | None:
        """How long the next recv may wait: to the end of the window or of the read timeout."""
        deadlines = [] if self._window_start is None else [self._window_start + self._floor.seconds]
        if self._read_timeout is not None:
            if now - self._last_data >= self._read_timeout:
                raise TimeoutError("timed out")
            deadlines.append(self._last_data + self._read_timeout)
        return max(min(deadlines) - now, 0.001) if deadlines else None


class Headers(dict[str, str]):
    """Response headers with case-insensitive names (stored lower-case; repeats joined by ", ").
    ``get`` of a missing header gives "" unless told otherwise."""

    def get(self, name: str, default: str = "") -> str:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Connection:
    """One TCP (or TLS) connection to an origin, directly or through a proxy; or one connection to
    a unix socket (``unix_path``: a Docker daemon), where host names the origin only."""

    def __init__(self, host: str, port: int, *, timeout: Timeout, tls: ssl.SSLContext | None = None,
                 proxy: Proxy | None = None, unix_path: str | None = None, floor: SpeedFloor | None = None) -> None:
        self.host, self.port = host, port
        self._timeout = timeout
        self._floor = floor if floor is not None and floor.rate > 0 else None
        self._floored: _FlooredSocket | None = None
        self._tls = tls
        self._proxy = proxy
        self._unix_path = unix_path
        self.sock: socket.socket | None = None
        self.reader: io.BufferedReader | None = None

    def open(self) -> None:
        sock = self._connect_unix(self._unix_path) if self._unix_path is not None else self._connect_tcp()
        self.sock = sock
        if self._floor is None:
            self.reader = sock.makefile("rb")
        else:
            self._floored = _FlooredSocket(sock, self._floor, self._timeout.read)
            self.reader = io.BufferedReader(self._floored)

    def _connect_tcp(self) -> socket.socket:
        host, port = (self._proxy.host, self._proxy.port) if self._proxy else (self.host, self.port)
        # An ASCII name goes to getaddrinfo as bytes: a str makes it load the idna codec (1.5 ms).
        sock = socket.create_connection((host.encode() if host.isascii() else host, port),  # type: ignore[arg-type]
                                        timeout=self._timeout.connect)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # requests are one write, then wait
            if self._tls is not None:
                if self._proxy is not None:
                    _open_tunnel(sock, self.host, self.port, self._proxy)
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self._timeout.read)
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_unix(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout.connect)
            sock.connect(path)
            sock.settimeout(self._timeout.read)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = self._floored = None

    def still_open(self) -> bool:
        """False when an idle connection has something to read: the server closed it (or sent junk)."""
        if self.sock is None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def send(self, method: str, target: str, headers: dict[str, str], body: Body, *,
             protocol: str = "HTTP/1.1") -> None:
        """Send one request. ``protocol="HTTP/1.0"`` asks for a body without chunked framing,
        delimited by the end of the connection (what a long stream is cheapest to read as)."""
        if self.sock is None:
            self.open()
        assert self.sock is not None
        length = _body_length(body)
        if length is None and method in ("POST", "PUT", "PATCH"):
            length = 0  # an empty body still says so: some servers and proxies insist (411)
        lines = [f"{method} {target} {protocol}", *(f"{name}: {value}" for name, value in headers.items())]
        if length is not None and not any(name.lower() == "content-length" for name in headers):
            lines.append(f"Content-Length: {length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self._floored is not None:
            self.sock.settimeout(self._timeout.read)  # the floor shortened it for its last recv
        if isinstance(body, bytes) and len(body) <= SEND_BLOCK:
            self.sock.sendall(head + body)
        else:
            self._send_body(head, body)
        if self._floored is not None:
            self._floored.restart()

    def _send_body(self, head: bytes, body: Body) -> None:
        assert self.sock is not None
        self.sock.sendall(head)
        if isinstance(body, bytes):
            self.sock.sendall(body)
        elif body is not None:
            body.seek(0)
            if self._tls is None:
                self.sock.sendfile(body)  # type: ignore[arg-type]
            else:
                while block := body.read(SEND_BLOCK):
                    self.sock.sendall(block)


def _open_tunnel(sock: socket.socket, host: str, port: int, proxy: Proxy) -> None:
    """CONNECT host:port through the proxy; TLS then runs end to end with the registry."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 literals in brackets
    lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}",
             *(f"{name}: {value}" for name, value in proxy.headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    reader = sock.makefile("rb", buffering=0)  # unbuffered: no byte of the TLS handshake may be taken
    try:
        status, _ = _read_status_line(reader)
        while _read_line(reader).strip():
            pass
    finally:
        reader.close()
    if status != 200:
        raise OSError(f"proxy {proxy.host}:{proxy.port} refused the tunnel to {where} (HTTP {status})")


def _body_length(body: Body) -> int | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return len(body)
    return os.fstat(body.fileno()).st_size


def _read_line(reader: _Lines) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("a line of the response is too long")
    return line


def _read_status_line(reader: _Lines) -> tuple[int, str]:
    """The status code and HTTP version of a status line."""
    line = _read_line(reader)
    if not line:
        raise ProtocolError("the connection closed before a response arrived")
    version, _, rest = line.decode("latin-1").partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(code), version


def _read_headers(reader: _Lines) -> Headers:
    found: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = _read_line(reader)
        if not line:
            raise IncompleteBody("the connection closed inside the response headers")
        if line in (b"\r\n", b"\n"):
            return Headers(found)
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        key, value = name.strip().lower(), value.strip()
        found[key] = f"{found[key]}, {value}" if key in found else value
    raise ProtocolError(f"more than {MAX_HEADERS} header lines")


class Response:
    """One response: status, headers, and a body to stream. Call :meth:`release` when done;
    without a pool, the connection is closed then."""

    def __init__(self, pool: Pool | None, origin: str, connection: Connection, method: str) -> None:
        self._pool, self._origin = pool, origin
        self._connection: Connection | None = connection
        reader = connection.reader
        assert reader is not None
        self._reader = reader
        while True:
            self.status, version = _read_status_line(reader)
            self.headers = _read_headers(reader)
            if not 100 <= self.status < 200:
                break  # 1xx answers (100 Continue) are interim: the real one follows
        tokens = {t.strip().lower() for t in self.headers.get("Connection").split(",")}
        self._keep_alive = "close" not in tokens and (version != "HTTP/1.0" or "keep-alive" in tokens)
        self._chunked = "chunked" in self.headers.get("Transfer-Encoding").lower()
        self._chunk_left = 0
        length = self.headers.get("Content-Length")
        self._remaining: int | None = int(length) if length.isdigit() and not self._chunked else None
        self._done = method == "HEAD" or self.status in _NO_BODY_STATUSES or self._remaining == 0
        if not self._done and self._remaining is None and not self._chunked:
            self._keep_alive = False  # the body runs to the end of the connection

    def read(self, amount: int) -> bytes:
        """Up to ``amount`` bytes of the body; b"" at its end. Raises IncompleteBody on a cut."""
        if self._done:
            return b""
        if self._chunked:
            return self._read_chunk(amount)
        if self._remaining is None:
            data = self._reader.read(amount)
            self._done = not data
            return data
        data = self._reader.read(min(amount, self._remaining))
        if not data:
            raise IncompleteBody(f"the body ended {self._remaining} bytes short")
        self._remaining -= len(data)
        self._done = self._remaining == 0
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the body, straight from the socket unless the body is chunked;
        fewer bytes only at the body's end. Raises IncompleteBody on a cut."""
        if self._done:
            return 0
        if self._chunked:
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        want = len(buffer) if self._remaining is None else min(len(buffer), self._remaining)
        got = self._reader.readinto(buffer[:want])  # loops in C until full or the end
        if self._remaining is None:
            self._done = got < want
            return got
        self._remaining -= got
        if got < want:
            raise IncompleteBody(f"the body ended {self._remaining} bytes short")
        self._done = self._remaining == 0
        return got

    def _read_chunk(self, amount: int) -> bytes:
        if self._chunk_left == 0:
            line = _read_line(self._reader)
            if not line:
                raise IncompleteBody("the chunked body ended without its last chunk")
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"malformed chunk size {line[:80]!r}") from None
            if self._chunk_left == 0:
                _read_headers(self._reader)  # trailers, then the empty line that ends the body
                self._done = True
                return b""
        data = self._reader.read(min(amount, self._chunk_left))
        if not data:
            raise IncompleteBody("the chunked body was cut inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._reader.read(2) != b"\r\n":
            raise ProtocolError("a chunk did not end with CRLF")
        return data

    def stream(self, chunk_size: int) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

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
        if drain and not self._done:
            try:
                self.read_all(DRAIN_LIMIT)
            except (ValueError, *TRANSIENT):
                pass
        if self._done and self._keep_alive and self._pool is not None:
            self._pool.put(self._origin, connection)
        else:
            connection.close()


class Pool:
    """Idle keep-alive connections per origin (scheme://host:port); thread-safe."""

    def __init__(self, *, max_idle: int, timeout: Timeout, verify_tls: bool = True,
                 floor: SpeedFloor | None = None) -> None:
        self._max_idle = max_idle
        self._timeout = timeout
        self._floor = floor
        self._verify_tls = verify_tls
        self._idle: dict[str, list[Connection]] = {}
        self._proxies: dict[str, Proxy | None] = {}
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None

    def request(self, method: str, url: str, headers: dict[str, str], body: Body = None) -> Response:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Host": parts.netloc.rpartition("@")[2], **headers}
        proxy = self._proxy(origin)
        if proxy is not None and parts.scheme == "http":  # a plain-HTTP proxy takes the whole URL
            target, headers = origin + target, {**headers, **proxy.headers}
        connection, reused = self._take(origin)
        try:
            try:
                connection.send(method, target, headers, body)
                return Response(self, origin, connection, method)
            except (ProtocolError, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle connection just as we used it: once more on a new one.
                connection.close()
                connection.send(method, target, headers, body)
                return Response(self, origin, connection, method)
        except BaseException:
            connection.close()
            raise

    def _take(self, origin: str) -> tuple[Connection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if connection.still_open():
                    return connection, True
                connection.close()
        return self._new(origin), False

    def put(self, origin: str, connection: Connection) -> None:
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
        proxy = proxy_for(parts.scheme, parts.hostname or "", _port_of(origin))
        with self._lock:
            self._proxies[origin] = proxy
        return proxy

    def _new(self, origin: str) -> Connection:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProtocolError(f"cannot connect to {origin!r}: only http:// and https:// URLs")
        tls = self._tls() if parts.scheme == "https" else None
        return Connection(parts.hostname, _port_of(origin), timeout=self._timeout, tls=tls, proxy=self._proxy(origin),
                          floor=self._floor)

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


def _port_of(origin: str) -> int:
    parts = urlsplit(origin)
    return parts.port or (443 if parts.scheme == "https" else 80)
