"""docker-daemon: pulls from the private dockerd: costs proven from its debug log, results read by skopeo."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from cache.errors import DaemonUnavailable, ImageNotFound, StreamCutOff
from cache.formats.docker_save import LayerChooser, SaveReader
from cache.ingest.pull import PullOptions, pull
from cache.model.digest import parse_digest
from cache.model.manifests import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from cache.model.refs import DaemonSource
from cache.sources.daemon import NO_STORAGE_READS, pull_from_daemon
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import build_image, load_into_daemon, push, random_layer
from tests.services import Daemon, Registry, skopeo

pytestmark = pytest.mark.daemon


@pytest.fixture(autouse=True)
def save_stream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This file tests the `docker save` route; test_daemon_storage.py tests reading overlay2 directly."""
    monkeypatch.setenv(NO_STORAGE_READS, "1")

BASE = [random_layer(1_500_000, 31), random_layer(200_000, 32, compressible=True)]
NEW = random_layer(400_000, 33)
OTHER = random_layer(3000, 34)


@pytest.fixture(scope="module")
def images(dockerd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Images in the daemon: a base, an app on it with one more layer, one with a repeated layer."""
    root = tmp_path_factory.mktemp("daemon-images")
    for name, layers in (("lh/base:1", BASE), ("lh/app:1", [*BASE, NEW]), ("lh/dup:1", [BASE[0], OTHER, BASE[0]])):
        image = build_image(root / name.replace("/", "-").replace(":", "-"), layers, tag="t")
        load_into_daemon(image.layout, "t", dockerd, name)
    # An image made by `docker build` (FROM, COPY, ENV, LABEL), so the daemon wrote its own layers.
    context = root / "build"
    (context / "files").mkdir(parents=True)
    (context / "files" / "big.bin").write_bytes(os.urandom(700_000))
    for i in range(30):
        (context / "files" / f"small{i}.txt").write_text(f"file {i}\n")
    (context / "Dockerfile").write_text(
        "FROM lh/base:1\nCOPY files/big.bin /big.bin\nENV MODE=test\nCOPY files /files\nLABEL built=yes\n"
    )
    os.environ["DOCKER_BUILDKIT"] = "0"  # the classic builder: what dockerd 20.10 runs without buildkit
    try:
        dockerd.docker("build", "-q", "-t", "lh/built:1", str(context), check=True)
    finally:
        del os.environ["DOCKER_BUILDKIT"]
    return {"base": "lh/base:1", "app": "lh/app:1", "dup": "lh/dup:1", "built": "lh/built:1"}


def daemon_diff_ids(dockerd: Daemon, name: str) -> list[str]:
    return list(dockerd.client().api.inspect_image(name)["RootFS"]["Layers"])


def snapshot(store: BlobStore) -> tuple[set[str], bytes, list[str]]:
    return (set(os.listdir(store.blobs_dir)), store.index_path.read_bytes(), sorted(os.listdir(store.ingest_dir)))


def decompressed_sha256(path: Path, media_type: str) -> str:
    """A layer's diff_id computed here, with gzip/zstandard directly, not with layerhoard's code."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if media_type.endswith("+zstd"):
            stream = zstandard.ZstdDecompressor().stream_reader(handle)
        elif media_type.endswith("+gzip"):
            stream = gzip.GzipFile(fileobj=handle)  # type: ignore[assignment]
        else:
            stream = handle  # type: ignore[assignment]
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def test_cold_pull_then_cached_pull_makes_no_save(dockerd: Daemon, images: dict[str, str], store: BlobStore) -> None:
    name = images["app"]
    mark = dockerd.mark()
    cold = pull_from_daemon(store, DaemonSource(name), docker_host=dockerd.host)
    assert len(dockerd.save_calls(mark)) == 1
    assert cold.ref == "docker-daemon:docker.io/lh/app:1" and cold.source == "docker-daemon:lh/app:1"
    assert [layer.diff_id for layer in cold.layers] == daemon_diff_ids(dockerd, name)
    assert not any(layer.reused for layer in cold.layers)
    assert {layer.media_type for layer in cold.layers} == {OCI_LAYER_ZSTD}
    image = load_image(store, cold.ref)
    assert str(image.config.digest) == dockerd.client().api.inspect_image(name)["Id"]  # config byte for byte

    mark = dockerd.mark()
    cached = pull_from_daemon(store, DaemonSource(name), docker_host=dockerd.host)
    assert dockerd.save_calls(mark) == []  # no GET /images/…/get at all
    assert all(layer.reused for layer in cached.layers) and cached.bytes_fetched == 0
    assert cached.digest == cold.digest


def test_new_layer_on_cached_base_stores_only_its_bytes(
    dockerd: Daemon, images: dict[str, str], store: BlobStore
) -> None:
    base = pull_from_daemon(store, DaemonSource(images["base"]), docker_host=dockerd.host)
    before = set(os.listdir(store.blobs_dir))
    app = pull_from_daemon(store, DaemonSource(images["app"]), docker_host=dockerd.host)
    assert [layer.reused for layer in app.layers] == [True, True, False]
    assert [layer.digest for layer in app.layers[:2]] == [layer.digest for layer in base.layers]
    added = set(os.listdir(store.blobs_dir)) - before
    config_id = dockerd.client().api.inspect_image(images["app"])["Id"]
    assert added == {parse_digest(app.layers[2].digest).hex, parse_digest(app.digest).hex, config_id[7:]}


def test_stored_layers_are_hashed_not_written(dockerd: Daemon, images: dict[str, str], store: BlobStore) -> None:
    """Straight on the daemon's save stream: the base's folders are known by name before their bytes."""
    pull_from_daemon(store, DaemonSource(images["base"]), docker_host=dockerd.host)
    api = dockerd.client().api
    diff_ids = [parse_digest(d) for d in daemon_diff_ids(dockerd, images["app"])]
    response = api._get(api._url("/images/{0}/get", images["app"]), stream=True, timeout=None)
    contents = SaveReader(store, LayerChooser(store, diff_ids), what="test").read(response.raw)
    try:
        written = {layer.diff_id for layer in contents.layers.values() if layer.staged is not None}
        assert written == {diff_ids[2]}
    finally:
        contents.discard()


def test_image_built_by_docker_build(dockerd: Daemon, images: dict[str, str], store: BlobStore) -> None:
    pull_from_daemon(store, DaemonSource(images["base"]), docker_host=dockerd.host)
    report = pull_from_daemon(store, DaemonSource(images["built"]), docker_host=dockerd.host)
    assert [layer.diff_id for layer in report.layers] == daemon_diff_ids(dockerd, images["built"])
    assert [layer.reused for layer in report.layers] == [True, True, False, False]
    assert report.requests == 1  # every folder was named right: one save, no second pass


def test_repeated_layer_linked_by_docker_save(dockerd: Daemon, images: dict[str, str], store: BlobStore) -> None:
    report = pull_from_daemon(store, DaemonSource(images["dup"]), docker_host=dockerd.host)
    assert [layer.diff_id for layer in report.layers] == daemon_diff_ids(dockerd, images["dup"])
    assert report.layers[0].digest == report.layers[2].digest


def test_skopeo_reads_the_stored_image(
    dockerd: Daemon, images: dict[str, str], store: BlobStore, tmp_path: Path
) -> None:
    report = pull_from_daemon(store, DaemonSource(images["built"]), docker_host=dockerd.host)
    inspected = json.loads(skopeo("inspect", f"oci:{store.root}:{report.ref}").stdout)
    assert inspected["Digest"] == report.digest
    assert inspected["Labels"]["built"] == "yes"
    skopeo("copy", "--quiet", f"oci:{store.root}:{report.ref}", f"oci:{tmp_path / 'out'}:copy")
    out = tmp_path / "out"
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    diff_ids = [decompressed_sha256(out / "blobs" / "sha256" / layer["digest"][7:], layer["mediaType"])
                for layer in manifest["layers"]]
    assert diff_ids == daemon_diff_ids(dockerd, images["built"])


def test_base_pulled_from_a_registry_is_reused(
    dockerd: Daemon, registry: Registry, store: BlobStore, tmp_path: Path
) -> None:
    base_layers = [random_layer(800_000, 41), random_layer(90_000, 42, compressible=True)]
    base = build_image(tmp_path / "base", base_layers, tag="1", compression="gzip")
    ref = push(base.layout, "1", registry, "daemon/base:1")
    pull(store, ref, PullOptions())
    registry_blobs = [layer.digest for layer in base.layers]

    app = build_image(tmp_path / "app", [*base_layers, random_layer(120_000, 43)], tag="1", compression="gzip")
    load_into_daemon(app.layout, "1", dockerd, "lh/on-registry-base:1")
    before = set(os.listdir(store.blobs_dir))
    report = pull_from_daemon(store, DaemonSource("lh/on-registry-base:1"), docker_host=dockerd.host)
    assert [layer.digest for layer in report.layers[:2]] == registry_blobs  # the registry's gzip blobs
    assert [layer.media_type for layer in report.layers] == [OCI_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_ZSTD]
    assert [layer.reused for layer in report.layers] == [True, True, False]
    added = set(os.listdir(store.blobs_dir)) - before
    assert parse_digest(report.layers[2].digest).hex in added and len(added) == 3  # new layer, config, manifest


def test_cli_pull_json(dockerd: Daemon, images: dict[str, str], tmp_path: Path) -> None:
    def run() -> dict[str, object]:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "cache"), "--json", "pull",
             f"docker-daemon:{images['base']}", "--docker-host", dockerd.host],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    first = run()
    assert first["ref"] == "docker-daemon:docker.io/lh/base:1"
    mark = dockerd.mark()
    second = run()
    assert dockerd.save_calls(mark) == [] and second["bytes_fetched"] == 0
    assert second["digest"] == first["digest"]


# -- errors: each one line, nothing stored -----------------------------------------------------------


def test_no_daemon(store: BlobStore, tmp_path: Path) -> None:
    before = snapshot(store)
    with pytest.raises(DaemonUnavailable, match=r"DOCKER_HOST=.*--docker-host") as error:
        pull_from_daemon(store, DaemonSource("app:1"), docker_host=f"unix://{tmp_path}/nothing.sock")
    assert "\n" not in str(error.value)
    assert snapshot(store) == before


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "c"), "pull", "docker-daemon:app:1",
         "--docker-host", f"unix://{tmp_path}/nothing.sock"], capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "--docker-host" in result.stderr


def test_image_not_in_daemon(dockerd: Daemon, store: BlobStore) -> None:
    before = snapshot(store)
    mark = dockerd.mark()
    with pytest.raises(ImageNotFound, match="not in the Docker daemon"):
        pull_from_daemon(store, DaemonSource("lh/nothing:here"), docker_host=dockerd.host)
    assert dockerd.save_calls(mark) == []
    assert snapshot(store) == before


class CuttingProxy:
    """A unix socket in front of the daemon that cuts a save response after ``limit`` bytes."""

    def __init__(self, upstream: Path, path: Path, limit: int) -> None:
        self.upstream, self.path, self.limit = upstream, path, limit
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.upstream))
            state = {"save": False}
            threading.Thread(target=self._requests, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, state), daemon=True).start()

    @staticmethod
    def _requests(client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                if b"/get " in data or b"/get?" in data:
                    state["save"] = True
                upstream.sendall(data)
        except OSError:
            pass  # the response side closed both sockets after its cut

    def _responses(self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        sent = 0
        try:
            while data := upstream.recv(65536):
                if state["save"] and sent + len(data) > self.limit:
                    client.sendall(data[: self.limit - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        client.shutdown(socket.SHUT_RDWR)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def cutting_proxy(dockerd: Daemon, tmp_path: Path) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(dockerd.socket, tmp_path / "cut.sock", limit=1_000_000)
    yield proxy
    proxy.close()


def test_stream_cut_off(dockerd: Daemon, images: dict[str, str], store: BlobStore, cutting_proxy: CuttingProxy) -> None:
    before = snapshot(store)
    with pytest.raises(StreamCutOff, match="cut off") as error:
        pull_from_daemon(store, DaemonSource(images["app"]), docker_host=f"unix://{cutting_proxy.path}")
    assert "nothing was stored" in str(error.value) and "\n" not in str(error.value)
    assert snapshot(store) == before
    assert store.image_descriptor("docker-daemon:docker.io/lh/app:1") is None
