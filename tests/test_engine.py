"""The Engine API client (cache/sources/engine.py): which daemon, which API version, the save stream's
framing, and faults. The real dockerd proves the common path; a small misbehaving engine on a unix
socket gives what dockerd will not (other framings, a tar cut exactly between two members, errors)."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cache.errors import DaemonUnavailable, SourceError, StreamCutOff
from cache.model.refs import DaemonSource
from cache.sources.daemon import NO_STORAGE_READS, pull_from_daemon
from cache.sources.engine import SocketEngine, connect
from cache.store.blobstore import BlobStore
from tests.images import build_image, load_into_daemon, random_layer
from tests.savetars import SaveTar, write_save_tar
from tests.services import Daemon

LAYERS = [random_layer(300_000, 61), random_layer(70_000, 62)]


@pytest.fixture(autouse=True)
def save_stream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API calls of the save route; reading the daemon's storage is test_daemon_storage.py's."""
    monkeypatch.setenv(NO_STORAGE_READS, "1")


@dataclass
class Request:
    method: str
    path: str
    protocol: str


@dataclass
class FakeEngine:
    """Answers /_ping, inspect, history and save for one image from a save tar written by the tests."""

    save: SaveTar
    framing: str = "close"  # close (no length, ends with the connection), chunked, or length
    api_version: str | None = "1.43"
    cut_at: int | None = None  # send only this many bytes of the tar (a length or chunks announce all of it)
    inspect_status: int = 200
    requests: list[Request] = field(default_factory=list)

    def inspect(self) -> dict[str, object]:
        return {"Id": self.save.image_id, "RepoTags": ["app:1"], "RootFS": {"Layers": self.save.diff_ids}}

    def answer(self, method: str, path: str) -> tuple[int, bytes]:
        version = f"/v{self.api_version}" if self.api_version else ""
        if path == "/_ping":
            return 200, b"OK"
        if path == f"{version}/images/app:1/json":
            if self.inspect_status != 200:
                return self.inspect_status, json.dumps({"message": "the engine broke"}).encode()
            return 200, json.dumps(self.inspect()).encode()
        if path == f"{version}/images/app:1/history":
            return 200, json.dumps([{"Size": len(layer)} for layer in reversed(LAYERS)]).encode()
        if path == f"{version}/images/app:1/get":
            return 200, self.save.path.read_bytes()
        return 404, json.dumps({"message": f"no such image: {path}"}).encode()


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        method, path, protocol = line
        engine: FakeEngine = self.server.engine  # type: ignore[attr-defined]
        engine.requests.append(Request(method, path, protocol))
        status, body = engine.answer(method, path)
        framing, cut_at = (engine.framing, engine.cut_at) if path.endswith("/get") else ("length", None)
        head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", "Connection: close"]
        if engine.api_version:
            head.append(f"Api-Version: {engine.api_version}")
        if framing == "length":
            head.append(f"Content-Length: {len(body)}")
        elif framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = body[:cut_at] if cut_at is not None else body
        if framing == "chunked":
            for start in range(0, len(sent), 32768):
                piece = sent[start : start + 32768]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if cut_at is None:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(sent)


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[FakeEngine]:
    engine = FakeEngine(write_save_tar(tmp_path / "save.tar", LAYERS, "legacy"))
    server = socketserver.ThreadingUnixStreamServer(str(tmp_path / "engine.sock"), _Handler)
    server.daemon_threads = True
    server.engine = engine  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield engine
    server.shutdown()
    server.server_close()


def _host(tmp_path: Path) -> str:
    return f"unix://{tmp_path}/engine.sock"


def _stored(store: BlobStore) -> set[str]:
    return set(os.listdir(store.blobs_dir))


@pytest.mark.parametrize("framing", ["close", "chunked", "length"])
def test_save_stream_in_every_framing(fake_engine: FakeEngine, store: BlobStore, tmp_path: Path, framing: str) -> None:
    fake_engine.framing = framing
    report = pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))
    assert [layer.diff_id for layer in report.layers] == fake_engine.save.diff_ids
    assert store.image_descriptor("docker-daemon:docker.io/library/app:1") is not None
    save = [r for r in fake_engine.requests if r.path.endswith("/get")]
    # Asked as HTTP/1.0, so that a real daemon sends the tar unframed; the rest as HTTP/1.1.
    assert [r.protocol for r in save] == ["HTTP/1.0"]
    assert {r.protocol for r in fake_engine.requests if r not in save} == {"HTTP/1.1"}


def test_api_version_from_ping(fake_engine: FakeEngine, store: BlobStore, tmp_path: Path) -> None:
    pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))
    paths = [r.path for r in fake_engine.requests]
    assert paths[0] == "/_ping" and paths.count("/_ping") == 1
    assert all(p.startswith("/v1.43/images/app:1/") for p in paths[1:])


def test_no_api_version_means_unversioned_paths(fake_engine: FakeEngine, store: BlobStore, tmp_path: Path) -> None:
    fake_engine.api_version = None  # an engine whose ping names no version (old podman)
    pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))
    paths = [r.path for r in fake_engine.requests]
    assert paths[1:] == ["/images/app:1/json", "/images/app:1/history", "/images/app:1/get"]


def test_docker_api_version_from_the_environment(
    fake_engine: FakeEngine, store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_API_VERSION", "1.41")
    fake_engine.api_version = "1.41"
    pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))
    assert "/_ping" not in [r.path for r in fake_engine.requests]
    assert all(r.path.startswith("/v1.41/") for r in fake_engine.requests)


@pytest.mark.parametrize("framing", ["close", "chunked", "length"])
def test_tar_cut_between_two_members_is_caught(
    fake_engine: FakeEngine, store: BlobStore, tmp_path: Path, framing: str
) -> None:
    """Cut where the tar alone looks whole. Ended by the connection, the missing end-of-archive
    blocks show it; chunked or with a length, the framing shows it too."""
    fake_engine.framing = framing
    with tarfile.open(fake_engine.save.path) as tar:
        for _ in tar:
            pass
        fake_engine.cut_at = tar.offset  # right after the last member: no end-of-archive blocks
    before = _stored(store)
    with pytest.raises(StreamCutOff, match=r"cut off .*nothing was stored") as error:
        pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))
    assert ("end-of-archive" in str(error.value)) == (framing == "close")
    assert _stored(store) == before and store.image_descriptor("docker-daemon:docker.io/library/app:1") is None
    assert os.listdir(store.ingest_dir) == []


def test_daemon_error_is_reported_with_its_message(fake_engine: FakeEngine, store: BlobStore, tmp_path: Path) -> None:
    fake_engine.inspect_status = 500
    with pytest.raises(SourceError, match=r"refused to inspect 'app:1': HTTP 500: the engine broke"):
        pull_from_daemon(store, DaemonSource("app:1"), docker_host=_host(tmp_path))


@pytest.mark.parametrize(
    ("host", "kind"),
    [("unix:///run/x.sock", "unix"), ("tcp://127.0.0.1:2375", "tcp"), ("tcp://10.1.2.3", "tcp"), ("http://h:1", "tcp")],
)
def test_plain_addresses_use_our_client(host: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    engine = connect(host)
    assert isinstance(engine, SocketEngine) and engine.host == host


def test_docker_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///elsewhere/docker.sock")
    assert connect().host == "unix:///elsewhere/docker.sock"
    assert connect("unix:///given.sock").host == "unix:///given.sock"  # --docker-host wins


def test_bad_tcp_port_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DaemonUnavailable, match=r"port is not a number.*--docker-host"):
        connect("tcp://127.0.0.1:notaport")


def test_tls_settings_go_through_docker_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKER_TLS_VERIFY with certificates missing: docker-py's own check, as one line."""
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "no-certs"))
    with pytest.raises(DaemonUnavailable) as error:
        connect("tcp://127.0.0.1:2376")
    assert "\n" not in str(error.value) and ("Docker settings" in str(error.value) or "reachable" in str(error.value))


@pytest.mark.daemon
def test_real_daemon_gets_a_versioned_http10_save(dockerd: Daemon, store: BlobStore, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(200_000, 71)], tag="t")
    load_into_daemon(image.layout, "t", dockerd, "lh/engine:1")
    mark = dockerd.mark()
    report = pull_from_daemon(store, DaemonSource("lh/engine:1"), docker_host=dockerd.host)
    assert report.layers and not report.layers[0].reused
    saves = dockerd.save_calls(mark)
    assert len(saves) == 1 and saves[0].startswith("/v1.") and saves[0].endswith("/images/lh/engine:1/get")


@pytest.mark.daemon
def test_current_docker_context_is_followed(
    dockerd: Daemon, store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docker context use` (made here by the docker CLI itself) points the pull at its daemon."""
    config = tmp_path / "docker-config"
    env = {**os.environ, "DOCKER_CONFIG": str(config)}
    env.pop("DOCKER_HOST", None)
    create = ["context", "create", "lh-private", "--docker", f"host={dockerd.host}"]
    for args in (create, ["context", "use", "lh-private"]):
        subprocess.run(["docker", *args], env=env, check=True, capture_output=True)
    image = build_image(tmp_path / "img", [random_layer(50_000, 72)], tag="t")
    load_into_daemon(image.layout, "t", dockerd, "lh/context:1")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert connect().host == dockerd.host
    report = pull_from_daemon(store, DaemonSource("lh/context:1"))
    assert store.image_descriptor("docker-daemon:docker.io/lh/context:1") is not None and report.layers
