"""``layerhoard ui``: the view alone, on a loopback port, without the registry side of ``serve``.

    server = make_view_server(store, "127.0.0.1:0")   # port 0: a free one
    print(server.url); server.serve_forever()

http.server's threading server is enough for one person's browser: a request renders the page
(well under a second) and the connection closes. Loopback only: a view for others is ``serve``,
with its TLS and authentication. Requests other than GET and HEAD are refused (405): read-only.
"""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cache.errors import LayerhoardError
from cache.server import parse_listen
from cache.server.auth import is_loopback
from cache.store.blobstore import BlobStore
from cache.view.routes import HTML, Response, answer


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: BlobStore) -> None:
        self.store = store
        super().__init__(address, ViewHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host if isinstance(host, str) else host.decode()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _ViewServer6(ViewServer):
    address_family = socket.AF_INET6


class ViewHandler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "layerhoard-ui"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self) -> None:
        self._send(Response(405, HTML, b"read-only: GET and HEAD only\n", {"Allow": "GET, HEAD"}), False)

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def _answer(self, head: bool) -> None:
        try:
            url = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            response = answer(self.server.store, url.path, query)
        except (OSError, ValueError, LayerhoardError) as error:  # an unreadable cache: one line, no traceback
            response = Response(500, "text/plain; charset=utf-8", f"cannot read the cache: {error}\n".encode())
        self._send(response, head)

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.status)
        for key, value in {**response.all_headers(), "Content-Length": str(len(response.body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the person at the browser is the one reading the terminal."""


def make_view_server(store: BlobStore, listen: str) -> ViewServer:
    """A bound server for the view on ``listen`` (HOST:PORT, loopback only)."""
    host, port = parse_listen(listen)
    if not is_loopback(host):
        raise LayerhoardError(f"refusing --listen {listen}: `layerhoard ui` listens on loopback only; "
                              "to show the view to others, run `layerhoard serve` (with --htpasswd and TLS)")
    kind = _ViewServer6 if ":" in host else ViewServer
    try:
        return kind((host, port), store)
    except OSError as error:
        raise LayerhoardError(f"cannot listen on {listen}: {error.strerror or error}") from None
