"""`serve` against a hostile client (issue 14): header injection through ?ns=, a stalled push that
held a digest's lock, upload sessions that gc removed or that never expired, and malformed framing
that gave tracebacks. Malformed HTTP goes over raw sockets (tests/rawhttp.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cache.model.digest import parse_digest
from cache.server import RegistryServer
from cache.store.blobstore import BlobStore
from tests.lifecycle_support import REPO_ROOT, run_cli
from tests.rawhttp import address_of, exchange, parse, read_all
from tests.services import free_port, wait_until
from tests.test_enospc import small_fs  # noqa: F401 - the fixture: a 4 MiB tmpfs
from tests.test_serve import start


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def push_server(store: BlobStore, **options: object) -> contextlib.AbstractContextManager[RegistryServer]:
    return start(store, allow_push=True, **options)


# -- item 3: nothing a client sends reaches a response header ----------------------------------
@pytest.mark.parametrize("ns", ["x%0d%0aSet-Cookie:%20evil=1",
                                "x%0d%0a%0d%0aHTTP/1.1%20200%20OK%0d%0aContent-Length:%200%0d%0a%0d%0a",
                                "x%0aSet-Cookie:%20evil=1", "r.example%09", "%e2%98%83.example"])
def test_ns_never_reaches_a_header(store: BlobStore, ns: str) -> None:
    with start(store) as server:
        for path in (f"/v2/_catalog?ns={ns}", f"/v2/a/b/manifests/1?ns={ns}", f"/v2/a/tags/list?ns={ns}"):
            response = exchange(address_of(server.url), get(path))
            assert response.status == 400 and response.error_codes() == ["NAME_INVALID"], path
            assert response.header("OCI-Namespace") is None
            head = response.raw.partition(b"\r\n\r\n")[0]
            assert b"Set-Cookie" not in head and response.header("Set-Cookie") is None
            assert response.raw.endswith(response.body)  # one response, nothing smuggled after it


def test_valid_ns_is_echoed(store: BlobStore) -> None:
    with start(store) as server:
        response = exchange(address_of(server.url), get("/v2/_catalog?ns=registry.example:5000"))
        assert response.status == 200 and response.header("OCI-Namespace") == "registry.example:5000"


def test_the_header_guard_refuses_what_could_inject() -> None:
    from cache.server.handler import UnsafeHeader, check_header  # here: the module-level tests run without it

    for name, value in [("X", "a\r\nSet-Cookie: 1"), ("X", "a\nb"), ("X", "\x00"), ("X", "caf\u00e9"),
                        ("X", "\u2603"), ("X-\r\nY", "1"), ("", "1"), ("X Y", "1")]:
        with pytest.raises(UnsafeHeader):
            check_header(name, value)
    check_header("Link", '</v2/_catalog?n=1&last=a/b>; rel="next"')


# -- item 4: a client that stalls mid-body holds no lock and is dropped --------------------------
def test_stalled_push_does_not_block_the_digest(store: BlobStore) -> None:
    data = os.urandom(1_000_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with push_server(store, read_timeout=3.0) as server:
        stalled = socket.create_connection(address_of(server.url), timeout=10)
        try:
            stalled.sendall(f"POST /v2/stall/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 1000000\r\n\r\n".encode() + data[:10])
            time.sleep(0.3)  # the server is now waiting for the rest of the body
            began = time.monotonic()
            ingest = threading.Thread(target=store.ingest, args=(parse_digest(digest), [data], len(data)))
            ingest.start()
            ingest.join(timeout=2.5)  # before the read timeout: only a lock-free spool lets it through
            assert not ingest.is_alive(), "ingest of the digest waited for the stalled client"
            assert time.monotonic() - began < 2
            assert store.read_bytes(parse_digest(digest)) == data
            began = time.monotonic()
            read_all(stalled)  # the server drops the idle client after its read timeout
            assert time.monotonic() - began < 6
        finally:
            stalled.close()
        wait_until(lambda: not list(store.ingest_dir.glob("upload-*")), 5, "the stalled spool's removal")


def test_stalled_chunk_put_does_not_block_the_digest(store: BlobStore) -> None:
    data = os.urandom(200_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with push_server(store, read_timeout=3.0) as server:
        location = requests.post(f"{server.url}/v2/stall/blobs/uploads/").headers["Location"]
        requests.patch(server.url + location, data=data[:100_000])
        stalled = socket.create_connection(address_of(server.url), timeout=10)
        try:
            stalled.sendall(f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 100000\r\n\r\n".encode() + data[100_000:100_010])
            time.sleep(0.3)
            ingest = threading.Thread(target=store.ingest, args=(parse_digest(digest), [data], len(data)))
            ingest.start()
            ingest.join(timeout=2.5)
            assert not ingest.is_alive(), "ingest of the digest waited for the stalled client"
        finally:
            stalled.close()


# -- item 12: upload sessions are marked in use, expire, and are capped ---------------------------
def test_upload_survives_gc_while_serve_runs(store: BlobStore) -> None:
    data = os.urandom(200_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with push_server(store) as server:
        location = server.url + requests.post(f"{server.url}/v2/gc/app/blobs/uploads/").headers["Location"]
        assert requests.patch(location, data=data[:100_000]).status_code == 202
        collected = run_cli(store.root, "gc", "--grace", "0s")
        assert collected.returncode == 0, collected.stderr
        assert requests.patch(location, data=data[100_000:]).status_code == 202
        done = requests.put(f"{location}?digest={digest}")
        assert done.status_code == 201, done.text
    assert store.read_bytes(parse_digest(digest)) == data
    assert list(store.ingest_dir.glob("upload-*")) == []


def test_abandoned_upload_expires(store: BlobStore) -> None:
    with push_server(store, upload_expiry=1.0) as server:
        location = requests.post(f"{server.url}/v2/old/app/blobs/uploads/").headers["Location"]
        assert requests.patch(server.url + location, data=b"x" * 1000).status_code == 202
        upload_file = store.ingest_dir / f"upload-{location.rsplit('/', 1)[1]}"
        assert upload_file.exists()
        wait_until(lambda: not upload_file.exists(), 5, "the expired upload's removal")
        late = requests.patch(server.url + location, data=b"y")
        assert late.status_code == 404 and late.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_open_uploads_are_capped(store: BlobStore) -> None:
    with push_server(store, max_uploads=2) as server:
        url = f"{server.url}/v2/cap/app/blobs/uploads/"
        first, second, third = (requests.post(url) for _ in range(3))
        assert first.status_code == second.status_code == 202
        assert third.status_code == 429 and third.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert requests.delete(server.url + first.headers["Location"]).status_code == 204
        assert requests.post(url).status_code == 202


# -- item 14: malformed requests get a clean 4xx, and a full disk says so -------------------------
@contextlib.contextmanager
def serve_process(cache: Path, *options: str) -> Iterator[tuple[tuple[str, int], Path]]:
    """`layerhoard [options] serve --allow-push` in a process; yields its address and stderr file."""
    port = free_port()
    log = cache.parent / f"serve-{port}.stderr"
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *options, "serve",
                                    "--listen", f"127.0.0.1:{port}", "--allow-push"], stderr=stderr, cwd=REPO_ROOT)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).ok, 20, "serve")
        yield ("127.0.0.1", port), log
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C: serve removes its upload files on the way out
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_malformed_requests_get_clean_errors(store: BlobStore) -> None:
    blob = os.urandom(1000)
    digest = store.put_bytes(blob)
    huge = "9" * 5000
    with serve_process(store.root, "-v") as (address, log):
        cases = [
            (b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "SIZE_INVALID"),
            (b"GET /v2/a/tags/list HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "SIZE_INVALID"),
            (f"PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: x\r\nContent-Length: {huge}\r\n\r\n".encode(),
             400, "SIZE_INVALID"),
            (b"PUT /v2/a/manifests/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
             400, "SIZE_INVALID"),
            (b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
             400, "BLOB_UPLOAD_INVALID"),
            (get("/v2/_catalog?ns=%e2%98%83"), 400, "NAME_INVALID"),
            (get("/v2/_catalog?ns=%ff%fe"), 400, "NAME_INVALID"),
            (get(f"/v2/a/blobs/{digest}", f"Range: bytes={huge}-"), 416, "RANGE_INVALID"),
            (get(f"/v2/a/blobs/{digest}", f"Range: bytes=-{huge}1"), 206, None),
            (get(f"/v2/a/blobs/{digest}", f"Range: bytes=10-{huge}"), 206, None),
            (get("/v2/\x1b[31mred/tags/list"), 400, "NAME_INVALID"),
            (get("/v2/_catalog?n=%C2%B2"), 400, "UNSUPPORTED"),  # "²" passes str.isdigit(), not int()
        ]
        location = requests.post(f"http://{address[0]}:{address[1]}/v2/a/blobs/uploads/").headers["Location"]
        cases.append((f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 0-{huge}\r\n"
                      "Content-Length: 1\r\nConnection: close\r\n\r\nx".encode(), 202, None))  # a form not read
        for request, status, code in cases:
            response = exchange(address, request)
            assert response.status == status, (request[:80], response.raw[:300])
            if code is not None:
                assert response.error_codes() == [code], request[:80]
    stderr = log.read_text("latin-1")
    assert "Traceback" not in stderr and "\x1b" not in stderr, stderr
    assert "\\x1b[31mred" in stderr  # the request line is logged, escaped


def test_full_disk_during_push_is_a_clear_error(small_fs: Path) -> None:  # noqa: F811 - the fixture
    cache = small_fs / "cache"
    BlobStore(cache).close()
    data = os.urandom(6_000_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with serve_process(cache, "-q") as (address, log):  # -q: no access log; the 507 line shows regardless
        url = f"http://{address[0]}:{address[1]}/v2/full/app/blobs/uploads/"
        response = requests.post(f"{url}?digest={digest}", data=data)
        assert response.status_code == 507, response.text
        assert "disk is full" in response.json()["errors"][0]["message"]
        started = requests.post(url).headers["Location"]
        chunk = requests.patch(f"http://{address[0]}:{address[1]}{started}", data=data)
        assert chunk.status_code == 507, chunk.text
    lines = [line for line in log.read_text().splitlines() if not line.startswith("serving ")]
    assert len(lines) == 2 and all("disk is full" in line for line in lines), lines
    assert list((cache / "ingest").iterdir()) == []
    assert not BlobStore(cache).has(parse_digest(digest))


def test_raw_response_parser_reads_one_response() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"
    response = parse(raw)
    assert (response.status, response.body, response.header("x")) == (200, b"ok", "y")
