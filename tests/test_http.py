"""The registry client's HTTP layer (cache/registry/http.py) against a small loopback server.

A real registry never closes idle connections on cue or cuts a body mid-way; this server does,
so the pool's keep-alive, stale-connection and cut-body handling are shown here.
"""

from __future__ import annotations

import http.client
import ipaddress
import select
import socket
import socketserver
import ssl
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cache.errors import SourceError
from cache.registry.http import IncompleteBody, Pool, ProtocolError, Timeout
from cache.registry.proxy import proxy_for
from tests.services import in_thread

BODY = b"x" * 300_000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    close_idle = False  # close each connection after its first response, without saying so

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that drop a connection on purpose (cut bodies, stale keep-alive) are expected here


def _handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            self.server.connections += 1  # type: ignore[attr-defined]

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            cut = self.path == "/cut"
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            if send_body:
                self.wfile.write(BODY[: len(BODY) // 2] if cut else BODY)
            if cut or self.server.close_idle:  # type: ignore[attr-defined]
                self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _handler())
    with in_thread(server):
        yield server


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _get(pool: Pool, url: str, method: str = "GET") -> bytes:
    response = pool.request(method, url, {})
    try:
        assert response.status in (200, 204)
        return b"".join(response.stream(64 * 1024))
    finally:
        response.release()


def test_requests_share_one_kept_alive_connection(server: _Server) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    assert _get(pool, _url(server, "/a")) == BODY
    assert _get(pool, _url(server, "/b"), "HEAD") == b""
    assert _get(pool, _url(server, "/c")) == BODY
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(server: _Server) -> None:
    server.close_idle = True
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    for _ in range(3):
        assert _get(pool, _url(server, "/a")) == BODY
    assert server.connections == 3


def test_a_body_cut_short_raises_incomplete_read(server: _Server) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    response = pool.request("GET", _url(server, "/cut"), {})
    received = bytearray()
    with pytest.raises(IncompleteBody):
        for chunk in response.stream(64 * 1024):
            received += chunk
    response.release()
    assert bytes(received) == BODY[: len(BODY) // 2]  # what arrived is kept, for a Range resume
    assert _get(pool, _url(server, "/a")) == BODY  # and the pool goes on with a new connection


def test_releasing_an_unread_body_drops_its_connection(server: _Server) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    response = pool.request("GET", _url(server, "/a"), {})
    assert response.read(10) == BODY[:10]
    response.release()  # the rest of the body must not be read as the next response
    assert _get(pool, _url(server, "/b")) == BODY
    assert server.connections == 2


def test_a_refused_connection_is_an_os_error() -> None:
    pool = Pool(max_idle=4, timeout=Timeout(2, 2))
    with _Server(("127.0.0.1", 0), _handler()) as closed:
        url = _url(closed, "/a")
    with pytest.raises(OSError):
        pool.request("GET", url, {})


# -- proxies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "scheme", "host", "port", "expected"),
    [
        ({}, "https", "ghcr.io", 443, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https", "ghcr.io", 443, ("proxy", 3128)),
        ({"https_proxy": "proxy:3128"}, "https", "ghcr.io", 443, ("proxy", 3128)),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http", "ghcr.io", 80, None),  # HTTP_PROXY is another setting
        ({"HTTP_PROXY": "http://proxy"}, "http", "ghcr.io", 80, ("proxy", 80)),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https", "localhost", 5000, None),  # loopback never
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https", "127.0.0.1", 5000, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, "https", "ghcr.io", 443, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"}, "https", "r.example.com", 443, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".example.com"}, "https", "example.com", 443, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"}, "https", "badexample.com", 443,
         ("proxy", 3128)),
        ({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "10.0.0.0/8"}, "https", "10.1.2.3", 443, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "r.example.com:5000"}, "https", "r.example.com", 443,
         ("proxy", 3128)),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "r.example.com:5000"}, "https", "r.example.com", 5000,
         None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "[fd00::1]:5000"}, "https", "fd00::1", 5000, None),
    ],
)
def test_which_origins_go_through_a_proxy(
    environ: dict[str, str], scheme: str, host: str, port: int, expected: tuple[str, int] | None
) -> None:
    proxy = proxy_for(scheme, host, port, environ)
    assert (proxy.host, proxy.port) == expected if proxy else expected is None


def test_proxy_credentials_and_unsupported_schemes() -> None:
    proxy = proxy_for("https", "ghcr.io", 443, {"HTTPS_PROXY": "http://me:p%40ss@proxy:3128"})
    assert proxy is not None and proxy.headers == {"Proxy-Authorization": "Basic bWU6cEBzcw=="}  # me:p@ss
    with pytest.raises(SourceError, match="give an http://HOST:PORT proxy"):
        proxy_for("https", "ghcr.io", 443, {"HTTPS_PROXY": "socks5://proxy:1080"})


class _ForwardingProxy(ThreadingHTTPServer):
    """An HTTP proxy: absolute-form requests are forwarded, CONNECT opens a byte tunnel."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _proxy_handler())
        self.seen: list[tuple[str, str, str | None]] = []  # method, target, Proxy-Authorization


def _proxy_handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _note(self) -> None:
            self.server.seen.append((self.command, self.path, self.headers.get("Proxy-Authorization")))  # type: ignore[attr-defined]

        def do_GET(self) -> None:
            self._note()
            target = urlsplit(self.path)
            upstream = http.client.HTTPConnection(target.netloc, timeout=5)
            upstream.request("GET", target.path, headers={"Host": target.netloc})
            reply = upstream.getresponse()
            body = reply.read()
            self.send_response(reply.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_CONNECT(self) -> None:
            self._note()
            upstream = socket.create_connection(_host_port(self.path), timeout=5)
            self.send_response(200)
            self.end_headers()
            sockets = [self.connection, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    break
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        upstream.close()
                        self.close_connection = True
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)

    return Handler


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _outward_address() -> str:
    """An address of this machine that is not loopback (proxies are never used for loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no non-loopback address to reach through a proxy")
    return str(address)


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=registry",
                    "-days", "1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_requests_go_through_the_proxy_named_in_the_environment(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _Server((_outward_address(), 0), _handler())
    if scheme == "https":
        target.socket = _self_signed(tmp_path).wrap_socket(target.socket, server_side=True)
    proxy = _ForwardingProxy()
    with in_thread(target), in_thread(proxy):
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", f"http://me:secret@127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        pool = Pool(max_idle=4, timeout=Timeout(5, 5), verify_tls=False)
        origin = f"{scheme}://{target.server_address[0]}:{target.server_address[1]}"
        assert _get(pool, f"{origin}/blob") == BODY
    method, where, authorization = proxy.seen[0]
    assert authorization == "Basic bWU6c2VjcmV0"  # me:secret
    if scheme == "https":  # a tunnel: the proxy sees where, never what
        assert (method, where) == ("CONNECT", origin.removeprefix("https://"))
    else:
        assert (method, where) == ("GET", f"{origin}/blob")


# -- framing: responses a registry may send, written byte for byte -------------------------------

CANNED = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/until-close": b"HTTP/1.0 200 OK\r\n\r\nall of it",
    "/no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
    "/headers": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDocker-Content-Digest: sha256:x\r\n"
                b"Link: <a>\r\nLINK: <b>\r\n\r\n",
    "/cut-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nhalf",
    "/garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


class _RawServer(socketserver.ThreadingTCPServer):
    """Answers each request with the bytes CANNED names for its path; echoes upload lengths."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.connections = 0
        self.uploads: list[int] = []


class _RawHandler(socketserver.StreamRequestHandler):
    server: _RawServer

    def handle(self) -> None:
        self.server.connections += 1
        while line := self.rfile.readline():
            method, path, _ = line.decode().split(" ", 2)
            length = 0
            while (header := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length:
                self.server.uploads.append(len(self.rfile.read(length)))
            reply = CANNED.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello, world")
            self.wfile.write(reply if method != "HEAD" else b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
            if path in ("/until-close", "/close", "/cut-chunk"):
                return


@pytest.fixture
def raw() -> Iterator[_RawServer]:
    server = _RawServer()
    with in_thread(server):
        yield server


def _raw_url(server: _RawServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.mark.parametrize(("path", "body"), [
    ("/chunked", b"hello world"), ("/continue", b"ok"), ("/until-close", b"all of it"), ("/no-content", b""),
    ("/close", b"bye"),
])
def test_every_body_framing(raw: _RawServer, path: str, body: bytes) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    assert _get(pool, _raw_url(raw, path)) == body
    assert _get(pool, _raw_url(raw, "/after")) == b"hello, world"  # the connection stayed usable, or was renewed


def test_connection_close_and_http10_bodies_are_not_reused(raw: _RawServer) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    _get(pool, _raw_url(raw, "/close"))
    _get(pool, _raw_url(raw, "/until-close"))
    _get(pool, _raw_url(raw, "/a"))
    _get(pool, _raw_url(raw, "/b"), "HEAD")
    _get(pool, _raw_url(raw, "/chunked"))
    assert raw.connections == 3  # /close, /until-close, then one kept-alive connection for the rest


def test_header_names_are_case_insensitive_and_repeats_are_joined(raw: _RawServer) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    response = pool.request("GET", _raw_url(raw, "/headers"), {})
    response.release()
    assert response.headers.get("docker-content-digest") == "sha256:x"
    assert response.headers["Link"] == "<a>, <b>"
    assert "CONTENT-LENGTH" in response.headers
    assert response.headers.get("Location") == ""


@pytest.mark.parametrize(("path", "error"), [("/cut-chunk", IncompleteBody), ("/garbage", ProtocolError)])
def test_broken_responses_raise(raw: _RawServer, path: str, error: type[Exception]) -> None:
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    with pytest.raises(error):
        _get(pool, _raw_url(raw, path))


def test_bodies_are_sent_with_their_length(raw: _RawServer, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"b" * 3_000_000)
    pool = Pool(max_idle=4, timeout=Timeout(5, 5))
    with open(blob, "rb") as handle:
        handle.read(10)  # a file already read from is still sent whole
        pool.request("PUT", _raw_url(raw, "/upload"), {}, handle).release(drain=True)
    pool.request("PUT", _raw_url(raw, "/manifest"), {}, b"{}").release(drain=True)
    pool.request("POST", _raw_url(raw, "/session"), {}).release(drain=True)
    assert raw.uploads == [3_000_000, 2]
    assert raw.connections == 1


def test_https_is_verified_unless_told_otherwise(tmp_path: Path) -> None:
    server = _Server(("127.0.0.1", 0), _handler())
    server.socket = _self_signed(tmp_path).wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}/blob"
    with in_thread(server):
        assert _get(Pool(max_idle=4, timeout=Timeout(5, 5), verify_tls=False), url) == BODY
        with pytest.raises(ssl.SSLCertVerificationError):  # an OSError: the client retries, then says so
            Pool(max_idle=4, timeout=Timeout(5, 5)).request("GET", url, {})
