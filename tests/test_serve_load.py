"""`serve` under load and abuse (issue 16, parts 3 to 5): idle and half-sent requests (slowloris)
cost no worker and are closed by the header timeout, a connection cap answers 503, small responses
do not stall on Nagle's algorithm, pushed blobs have a size cap, every request gets an access-log
line and is counted in /metrics. Timings are asserted generously: these are correctness tests."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import statistics
import time
from pathlib import Path

import requests

from cache.store.blobstore import BlobStore
from tests.rawhttp import address_of, exchange, parse, read_all
from tests.test_serve import cached, start
from tests.test_serve_hardening import serve_process

HEAD_OPEN = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"  # a request head that never ends


def open_partial(address: tuple[str, int], count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(HEAD_OPEN)
        sockets.append(sock)
    return sockets


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` within ``seconds`` (whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        read_all(sock)
    except TimeoutError:
        return False
    return True


def test_slowloris_does_not_delay_a_normal_request(store: BlobStore, tmp_path: Path) -> None:
    cached(store, tmp_path, "docker.io/library/app:1")
    with start(store, header_timeout=3.0, workers=4) as server:
        address = address_of(server.url)
        partial = open_partial(address, 300)
        dripping = open_partial(address, 3)  # a byte now and then: the header timeout is for the whole head
        try:
            started = time.monotonic()
            response = requests.get(f"{server.url}/v2/library/app/manifests/1", timeout=5,
                                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            assert response.status_code == 200 and time.monotonic() - started < 5
            for _ in range(4):
                time.sleep(0.5)
                for sock in dripping:
                    sock.sendall(b"X")
            deadline = time.monotonic() + 10
            for sock in partial + dripping:
                assert closed_within(sock, max(0.1, deadline - time.monotonic())), "a partial request was kept"
            assert requests.get(f"{server.url}/v2/", timeout=5).status_code == 200
        finally:
            for sock in partial + dripping:
                sock.close()


def test_idle_keepalive_connections_are_closed(store: BlobStore) -> None:
    with start(store, idle_timeout=1.0) as server:
        with socket.create_connection(address_of(server.url), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert closed_within(sock, 5) and time.monotonic() - started >= 0.9


def test_connection_cap_answers_503(store: BlobStore) -> None:
    with start(store, max_connections=5) as server:
        address = address_of(server.url)
        idle = [socket.create_connection(address, timeout=10) for _ in range(5)]
        try:
            deadline = time.monotonic() + 5
            while server.open_connections < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            response = exchange(address, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response.status == 503, response.raw[:200]
            assert response.header("Retry-After") == "1" and response.error_codes() == ["TOOMANYREQUESTS"]
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while server.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert requests.get(f"{server.url}/v2/", timeout=5).status_code == 200


def test_keepalive_round_trips_do_not_stall(store: BlobStore, tmp_path: Path) -> None:
    """Headers and body in separate sends without TCP_NODELAY cost 40 ms each (Nagle + delayed ACK)."""
    cached(store, tmp_path, "docker.io/library/app:1")
    with start(store) as server, requests.Session() as session:
        url = f"{server.url}/v2/library/app/manifests/1"
        times = []
        for _ in range(20):
            started = time.perf_counter()
            assert session.get(url, timeout=5).status_code == 200
            times.append(time.perf_counter() - started)
        assert statistics.median(times) < 0.03, times


def test_pipelined_requests_are_all_answered(store: BlobStore) -> None:
    with start(store) as server:
        two = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        response = exchange(address_of(server.url), two)
        assert response.status == 200 and response.raw.count(b"HTTP/1.1 200") == 2


def test_oversized_head_is_refused(store: BlobStore) -> None:
    with start(store) as server:
        head = b"GET /v2/ HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
        assert exchange(address_of(server.url), head).status == 431


def test_access_log_line(store: BlobStore) -> None:
    lines: list[str] = []
    with start(store, access_log=lines.append) as server:
        requests.get(f"{server.url}/v2/", headers={"User-Agent": 'ua "quoted"'}, timeout=5)
        exchange(address_of(server.url), b"GET /v2/\x1b[31mred HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(lines) == 2, lines
    pattern = (r'127\.0\.0\.1 - - \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] "GET /v2/ HTTP/1\.1" 200 2 \d+\.\d{3}s '
               r'"ua \\x22quoted\\x22"')
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert '"GET /v2/\\x1b[31mred HTTP/1.1" 404 ' in lines[1] and "\x1b" not in lines[1], lines[1]


def test_access_log_is_on_by_default_and_quiet_with_q(tmp_path: Path) -> None:
    for options, expected in (((), 1), (("-q",), 0)):
        cache = tmp_path / f"cache{len(options)}"
        BlobStore(cache).close()
        with serve_process(cache, *options) as (address, log):
            requests.get(f"http://{address[0]}:{address[1]}/v2/_catalog", timeout=5)
        text = log.read_text()
        assert text.count('"GET /v2/_catalog HTTP/1.1" 200') == expected, text


def metric(text: str, name: str, **labels: str) -> float:
    shown = ",".join(f'{key}="{value}"' for key, value in labels.items())
    line = f"{name}{{{shown}}}" if shown else name
    values = [float(row.rpartition(" ")[2]) for row in text.splitlines() if row.rpartition(" ")[0] == line]
    assert len(values) == 1, (line, text)
    return values[0]


def test_metrics_after_a_few_requests(store: BlobStore, tmp_path: Path) -> None:
    image = cached(store, tmp_path, "docker.io/library/app:1")
    blob = image.layers[0].digest
    with start(store, allow_push=True) as server:
        base = f"{server.url}/v2/library/app"
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        assert requests.get(f"{base}/manifests/1", headers=accept, timeout=5).status_code == 200
        assert requests.get(f"{base}/blobs/{blob}", timeout=5).status_code == 200
        assert requests.get(f"{base}/blobs/sha256:{'0' * 64}", timeout=5).status_code == 404
        assert requests.get(f"{base}/manifests/nope", timeout=5).status_code == 404
        assert requests.post(f"{base}/blobs/uploads/", timeout=5).status_code == 202
        response = requests.get(f"{server.url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert metric(text, "layerhoard_http_requests_total", route="manifest", method="GET", status="200") == 1
    assert metric(text, "layerhoard_http_requests_total", route="blob", method="GET", status="404") == 1
    assert metric(text, "layerhoard_cache_requests_total", kind="blob", result="hit") == 1
    assert metric(text, "layerhoard_cache_requests_total", kind="blob", result="miss") == 1
    assert metric(text, "layerhoard_cache_requests_total", kind="manifest", result="hit") == 1
    assert metric(text, "layerhoard_cache_requests_total", kind="manifest", result="miss") == 1
    assert metric(text, "layerhoard_http_response_bytes_total") >= image.layers[0].size
    assert metric(text, "layerhoard_uploads_total", event="started") == 1
    assert metric(text, "layerhoard_uploads_total", event="completed") == 0
    assert metric(text, "layerhoard_open_connections") >= 1
    for row in text.splitlines():  # every line is a comment or `name{labels} number`
        assert row.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\})? [0-9.e+]+', row)


def test_upload_size_cap(store: BlobStore) -> None:
    small, large = os.urandom(600), os.urandom(1500)
    with start(store, allow_push=True, max_upload_size=1000) as server:
        base = f"{server.url}/v2/app"
        digest = "sha256:" + hashlib.sha256(large).hexdigest()
        response = requests.post(f"{base}/blobs/uploads/?digest={digest}", data=large, timeout=5)
        assert response.status_code == 413 and response.json()["errors"][0]["code"] == "SIZE_INVALID"
        location = requests.post(f"{base}/blobs/uploads/", timeout=5).headers["Location"]
        assert requests.patch(f"{server.url}{location}", data=small, timeout=5).status_code == 202
        response = requests.patch(f"{server.url}{location}", data=small, timeout=5)  # 1200 in all
        assert response.status_code == 413 and response.json()["errors"][0]["code"] == "SIZE_INVALID"
        chunked = requests.patch(f"{server.url}{location}", data=iter([small, small]), timeout=5)  # no length
        assert chunked.status_code == 413
        digest = "sha256:" + hashlib.sha256(small).hexdigest()
        assert requests.put(f"{server.url}{location}?digest={digest}", timeout=5).status_code == 201
        raw = exchange(address_of(server.url), f"POST /v2/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                       "Content-Length: 99999999999\r\nConnection: close\r\n\r\n".encode())
        assert raw.status == 413  # refused before a byte of the body is read
    assert parse(raw.raw).error_codes() == ["SIZE_INVALID"]


def test_a_tls_hello_to_plain_http_is_refused_at_once(store: BlobStore) -> None:
    """skopeo and containerd try HTTPS first and fall back to HTTP: a ClientHello sent to a
    plain-HTTP serve must be answered at once, not after the header timeout (skopeo waited 10 s)."""
    with start(store) as server:
        with socket.create_connection(address_of(server.url), timeout=5) as sock:
            sock.sendall(bytes.fromhex("160301020001"))  # the first bytes of a TLS ClientHello
            started = time.monotonic()
            answer = read_all(sock)
            assert time.monotonic() - started < 1.0
    assert answer.startswith(b"HTTP/1.1 400 ")
