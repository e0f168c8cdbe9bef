"""The registry client's HTTP layer (cache/registry/http.py) against a small loopback server.

A real registry never closes idle connections on cue or cuts a body mid-way; this server does,
so the pool's keep-alive, stale-connection and cut-body handling are shown here.
"""

from __future__ import annotations

import http.client
import ipaddress
import select
import socket
import ssl
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cache.errors import SourceError
from cache.registry.http import Pool, Timeout, proxy_for
from tests.services import in_thread

BODY = b"x" * 300_000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    close_idle = False  # close each connection after its first response, without saying so


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
        assert response.status == 200
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
    with pytest.raises(http.client.IncompleteRead):
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
