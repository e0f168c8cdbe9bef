"""A raw-socket HTTP/1.1 client for tests that must send what no HTTP library would: bad framing,
control characters, bodies that stop half way. It reads whatever comes back, byte for byte."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # everything the server sent on the connection, smuggled extras included

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def error_codes(self) -> list[str]:
        return [error["code"] for error in json.loads(self.body)["errors"]]


def exchange(address: tuple[str, int], request: bytes, timeout: float = 10) -> RawResponse:
    """Send ``request`` and read until the server closes the connection (ask it with
    ``Connection: close``); the first response is parsed, ``raw`` keeps everything."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request)
        return parse(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while piece := sock.recv(65536):
            data += piece
    except ConnectionResetError:
        pass  # what came before the reset is the answer
    return data


def parse(raw: bytes) -> RawResponse:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/") else 0
    headers = [(key.strip(), value.strip()) for key, _, value in (line.partition(":") for line in lines[1:])]
    length = next((int(value) for key, value in headers if key.lower() == "content-length"), len(rest))
    return RawResponse(status, headers, rest[:length], raw)


def address_of(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host.strip("[]"), int(port)
