"""The registry client's HTTP layer (cache/registry/http.py) against a small loopback server.

A real registry never closes idle connections on cue or cuts a body mid-way; this server does,
so the pool's keep-alive, stale-connection and cut-body handling are shown here.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cache.registry.http import Pool, Timeout
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
