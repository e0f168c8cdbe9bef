"""The connection side of ``serve``: accept, wait for whole request heads, hand them to a bounded pool.

One thread, the listener, owns every connection that is not inside a request. It accepts, reads
request heads without blocking, and closes a connection whose head takes longer than
``header_timeout`` or that stays idle between requests longer than ``idle_timeout``. A connection
whose head is complete goes to one of ``workers`` threads, which runs the handler for that one
request (bodies and blobs are read and sent there, blocking, with ``read_timeout``) and gives the
connection back. An idle or dripping client therefore costs a descriptor and a small buffer, never a
thread, and never delays a request that is ready (slowloris). Beyond ``max_connections`` a new
connection is answered 503 with Retry-After and closed; the cap stays below the process's file
limit, so accept never fails with EMFILE and spins (and if it does, accepting pauses briefly).

With a TLS context (``tls_context``, or a listening socket already wrapped in one), each accepted
connection's handshake runs here too, without blocking, under the same header timeout.

Costs: one select per batch of ready sockets, a scan for timeouts four times a second, a handoff
through a queue per request. Trusts: nothing a client sends; a head is capped at 64 KiB.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import resource
import selectors
import socket
import socketserver
import ssl
import threading
import time

MAX_HEAD = 64 * 1024  # a request head larger than this is refused (431), as most servers do
RESERVE_FDS = 128  # descriptors kept for the store, SQLite, upstream connections and lingering closes
_SCAN_EVERY = 0.25  # seconds between timeout scans
_LINGER = 1.0  # seconds a refused connection is drained before it is closed (so the client reads the 503)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
         b"Connection: close\r\nContent-Length: 97\r\n\r\n"
         b'{"errors":[{"code":"TOOMANYREQUESTS","message":"too many connections; retry later","detail":{}}]}')
_WAITING = ("handshake", "head", "idle")  # states in which the listener watches a connection
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
_NOT_HTTP = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class Connection:
    """One client connection: its socket, and the bytes read from it but not yet used.

    It is the handler's ``rfile`` too (``readline`` and ``read``), so a head read by the listener and
    the next pipelined request both stay with the connection between requests."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.deadline = deadline  # when the listener gives up on it (header or idle timeout)
        # handshake -> head -> busy (in a worker) -> idle -> head ...; closing; linger (refused)
        self.state = "handshake" if isinstance(sock, ssl.SSLSocket) else "head"

    def head_complete(self) -> bool:
        return b"\r\n\r\n" in self.buffer or b"\n\n" in self.buffer

    def not_http(self) -> bool:
        """Whether the bytes so far cannot begin an HTTP request: a method is upper-case letters
        (after any empty lines). A TLS ClientHello (0x16) is the common case: a client that tries
        HTTPS first (skopeo, containerd) must hear at once, not after the header timeout."""
        start = self.buffer.lstrip(b"\r\n")
        return bool(start) and not (65 <= start[0] <= 90)

    def fill(self) -> bool:
        """Read what is there without blocking; False at the end of the stream."""
        while len(self.buffer) <= MAX_HEAD:
            try:
                piece = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return True
            if not piece:
                return False
            self.buffer += piece
        return True

    # -- the handler's rfile -----------------------------------------------------------------------
    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self.buffer.find(b"\n", 0, limit if limit > 0 else None)
            if end >= 0:
                return self._take(end + 1)
            if 0 < limit <= len(self.buffer) or not self._more():
                return self._take(len(self.buffer) if limit <= 0 else min(limit, len(self.buffer)))

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            while self._more():
                pass
            return self._take(len(self.buffer))
        if not self.buffer:
            return self.sock.recv(size)  # straight from the socket: bodies skip the buffer
        return self._take(min(size, len(self.buffer)))

    def _more(self) -> bool:
        piece = self.sock.recv(65536)
        self.buffer += piece
        return bool(piece)

    def _take(self, count: int) -> bytes:
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to what the file limit allows once the soft limit is raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(1, min(wanted, soft - RESERVE_FDS))


class Listener(socketserver.TCPServer):
    """A TCP server whose requests run on a bounded pool; subclasses implement :meth:`serve_request`."""

    allow_reuse_address = True
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn; 128 refused bursts of 256

    def __init__(self, address: tuple[str, int], *, workers: int, max_connections: int, header_timeout: float,
                 idle_timeout: float, read_timeout: float) -> None:
        self.workers = workers
        self.max_connections = connection_cap(max_connections)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.tls_context: ssl.SSLContext | None = None  # set before serve_forever for HTTPS
        self.open_connections = 0  # read by /metrics
        self.refused_connections = 0
        self._connections: set[Connection] = set()  # the listener thread's alone
        self._lingering: set[Connection] = set()  # refused, drained before closing
        self._ready: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._returned: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._threads: list[threading.Thread] = []
        super().__init__(address, socketserver.BaseRequestHandler)

    # -- the subclass's part --------------------------------------------------------------------
    def serve_request(self, connection: Connection) -> bool:
        """Answer one request whose head is in ``connection.buffer``; True to keep the connection."""
        raise NotImplementedError

    def handle_error(self, request: object, client_address: object) -> None:
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    # -- the listener thread ----------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._stop.clear()
        self.socket.setblocking(False)
        self._threads = [threading.Thread(target=self._work, name=f"serve-worker-{n}", daemon=True)
                         for n in range(self.workers)]
        for thread in self._threads:
            thread.start()
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        accept_paused_until, next_scan = 0.0, 0.0
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(min(poll_interval, _SCAN_EVERY)):
                    if key.data == "accept":
                        if not self._accept(selector):
                            selector.unregister(self.socket)  # out of descriptors: pause, do not spin
                            accept_paused_until = time.monotonic() + 0.1
                    elif key.data == "wake":
                        self._take_returned(selector)
                    else:
                        self._readable(selector, key.data)
                now = time.monotonic()
                if accept_paused_until and now >= accept_paused_until:
                    selector.register(self.socket, selectors.EVENT_READ, "accept")
                    accept_paused_until = 0.0
                if now >= next_scan:
                    self._expire(selector, now)
                    next_scan = now + _SCAN_EVERY
        finally:
            for _ in self._threads:
                self._ready.put(None)
            for connection in [key.data for key in selector.get_map().values() if isinstance(key.data, Connection)]:
                self._close(connection)
            self._lingering.clear()
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait for it; requests in flight finish."""
        self._stop.set()
        self._wake()
        self._stopped.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is waiting; False when out of descriptors."""
        for _ in range(64):
            try:
                sock, address = socket.socket.accept(self.socket)  # plain accept, even on a TLS listener
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return False
                continue  # ECONNABORTED and the like: that client is gone
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall on small responses
            if self.open_connections >= self.max_connections:
                self._refuse(selector, sock)
                continue
            connection = Connection(self._tls(sock), address, time.monotonic() + self.header_timeout)
            self._connections.add(connection)
            self.open_connections += 1
            if connection.state == "handshake":
                self._handshake(selector, connection)
                if connection in self._connections:
                    selector.register(connection.sock, selectors.EVENT_READ, connection)
            else:
                selector.register(connection.sock, selectors.EVENT_READ, connection)
        return True

    def _tls(self, sock: socket.socket) -> socket.socket:
        context = self.tls_context or (self.socket.context if isinstance(self.socket, ssl.SSLSocket) else None)
        if context is None:
            return sock
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def _refuse(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        """503 and close. The request is drained for up to a second first (at most RESERVE_FDS / 2
        such connections at once): closing on unread bytes resets the connection, and the client may
        lose the answer with it."""
        self.refused_connections += 1
        connection = Connection(sock, ("", 0), time.monotonic() + _LINGER)
        connection.state = "linger"
        plain = self.tls_context is None and not isinstance(self.socket, ssl.SSLSocket)
        try:
            connection.fill()
            if plain:  # a TLS client cannot read a plain answer: it only sees the close
                sock.send(_BUSY)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        if len(self._lingering) >= RESERVE_FDS // 2:
            connection.close()
            return
        self._lingering.add(connection)
        selector.register(sock, selectors.EVENT_READ, connection)

    def _readable(self, selector: selectors.BaseSelector, connection: Connection) -> None:
        if connection.state == "linger":
            self._drain(selector, connection)
            return
        if connection.state == "handshake":
            self._handshake(selector, connection)
            if connection.state == "handshake" or connection not in self._connections:
                return
        try:
            alive = connection.fill()
        except OSError:
            alive = False
        if not alive:
            selector.unregister(connection.sock)
            self._close(connection)
        elif connection.not_http():
            selector.unregister(connection.sock)
            with contextlib.suppress(OSError):
                connection.sock.send(_NOT_HTTP)
            self._close(connection)
        elif connection.head_complete():
            selector.unregister(connection.sock)
            connection.state = "busy"
            self._ready.put(connection)
        elif len(connection.buffer) > MAX_HEAD:
            selector.unregister(connection.sock)
            with contextlib.suppress(OSError):
                connection.sock.send(_TOO_LARGE)
            self._close(connection)
        elif connection.buffer and connection.state == "idle":  # a new request began: the header timeout runs
            connection.state, connection.deadline = "head", time.monotonic() + self.header_timeout

    def _drain(self, selector: selectors.BaseSelector, connection: Connection) -> None:
        try:
            alive = connection.fill()
        except OSError:
            alive = False
        connection.buffer.clear()
        if not alive:
            self._end_linger(selector, connection)

    def _end_linger(self, selector: selectors.BaseSelector, connection: Connection) -> None:
        selector.unregister(connection.sock)
        self._lingering.discard(connection)
        connection.close()

    def _handshake(self, selector: selectors.BaseSelector, connection: Connection) -> None:
        assert isinstance(connection.sock, ssl.SSLSocket)
        try:
            connection.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # a plain-HTTP client, a wrong certificate, a reset
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(connection.sock)
            self._close(connection)
            return
        connection.state = "head"

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for connection in [c for c in self._connections if c.deadline <= now and c.state in _WAITING]:
            selector.unregister(connection.sock)
            self._close(connection)
        for connection in [c for c in self._lingering if c.deadline <= now]:
            self._end_linger(selector, connection)

    def _take_returned(self, selector: selectors.BaseSelector) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                connection = self._returned.get_nowait()
            except queue.Empty:
                return
            if self._stop.is_set() or connection.state == "closing":
                self._close(connection)
            else:
                selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _close(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self.open_connections -= 1
        connection.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes the listener already
            os.write(self._wake_w, b"x")

    # -- the workers ---------------------------------------------------------------------------
    def _work(self) -> None:
        while (connection := self._ready.get()) is not None:
            keep = False
            try:
                connection.sock.settimeout(self.read_timeout)
                keep = self.serve_request(connection)
            except Exception:
                self.handle_error(connection.sock, connection.address)
            if not keep or self._stop.is_set():
                self._close_from_worker(connection)
                continue
            with contextlib.suppress(OSError):
                connection.sock.setblocking(False)
            connection.state, connection.deadline = "idle", time.monotonic() + self.idle_timeout
            if connection.head_complete():
                connection.state = "busy"
                self._ready.put(connection)  # pipelined: the next request is here already
            else:
                self._returned.put(connection)
                self._wake()

    def _close_from_worker(self, connection: Connection) -> None:
        """Closing touches the listener's set: hand it back marked for closing instead."""
        connection.state = "closing"
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)
        if self._stop.is_set():  # the listener is gone or going
            connection.close()
            return
        self._returned.put(connection)
        self._wake()

