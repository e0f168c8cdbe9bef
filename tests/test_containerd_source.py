"""containerd:[NAMESPACE/]NAME against a private containerd (tests/clients.py): images that ctr
pulled from the test registry and that ctr imported, their blobs linked from containerd's content
store (the same inode, when on one file system), every digest checked, a corrupted blob refused.

Witnesses: ctr put the images there; the registry's and the layout's own digests; the inodes of
containerd's files; skopeo reads what was stored.
"""

from __future__ import annotations

import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.errors import DigestMismatch, ImageNotFound, InvalidReference
from cache.ingest.report import PullReport
from cache.model.digest import parse_digest
from cache.model.refs import DaemonSource
from cache.sources.containerd import ContainerdSource, parse, pull_from_containerd
from cache.sources.daemon import pull_from_daemon
from cache.store.blobstore import BlobStore
from tests.clients import Containerd, start_containerd
from tests.images import TestImage, build_image, push, random_layer
from tests.services import Registry, skopeo

pytestmark = pytest.mark.registry

NAMESPACE = "team"


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    yield from start_containerd()


def _import(containerd: Containerd, image: TestImage, name: str, namespace: str = NAMESPACE) -> None:
    """`ctr images import` of the layout's image, as an OCI archive written by skopeo."""
    archive = image.layout.parent / f"{image.layout.name}.tar"
    skopeo("copy", "--quiet", f"oci:{image.layout}:{image.tag}", f"oci-archive:{archive}:{name}")
    done = containerd.ctr("-n", namespace, "images", "import", "--no-unpack", str(archive))
    assert done.returncode == 0, done.stderr
    archive.unlink()


@pytest.fixture(scope="module")
def images(
    containerd: Containerd, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[TestImage, str]]:
    """name → (the image as made here, its name in containerd)."""
    root = tmp_path_factory.mktemp("containerd-images")
    pulled = build_image(root / "pulled", [random_layer(400_000, 1711), random_layer(30_000, 1712)], tag="t")
    reference = push(pulled.layout, "t", registry, "lh/ctd-pulled:1")
    done = containerd.ctr("-n", NAMESPACE, "images", "pull", "--plain-http", reference)
    assert done.returncode == 0, done.stderr
    imported = build_image(root / "imported", [random_layer(300_000, 1713), random_layer(20_000, 1714)], tag="t",
                           compression="zstd")
    _import(containerd, imported, "docker.io/lh/ctd-imported:1")
    return {"pulled": (pulled, reference), "imported": (imported, "docker.io/lh/ctd-imported:1")}


def _content(containerd: Containerd, digest: str) -> Path:
    return containerd.workdir / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256" / digest[7:]


def _pull(containerd: Containerd, store: BlobStore, name: str) -> PullReport:
    return pull_from_containerd(store, parse(name), address=str(containerd.socket),
                                root=str(containerd.workdir / "root"))


@pytest.mark.parametrize("which", ["pulled", "imported"])
def test_an_image_ctr_has_is_stored_with_its_blobs_linked(
    containerd: Containerd, images: dict[str, tuple[TestImage, str]], store: BlobStore, which: str
) -> None:
    image, name = images[which]
    report = _pull(containerd, store, f"{NAMESPACE}/{name}")
    assert report.ref == f"containerd:{NAMESPACE}/{name}" and report.route == "containerd"
    assert report.digest == image.manifest_digest
    assert [layer.digest for layer in report.layers] == [layer.digest for layer in image.layers]
    for layer in image.layers:
        ours, theirs = os.stat(store.path(parse_digest(layer.digest))), os.stat(_content(containerd, layer.digest))
        assert (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)  # linked, not copied
        assert str(store.index.diff_id_of(parse_digest(layer.digest))) == layer.diff_id  # verified pair
    inspected = skopeo("inspect", "--raw", f"oci:{store.root}:{report.ref}").stdout
    assert inspected.encode() == image.manifest

    again = _pull(containerd, store, f"{NAMESPACE}/{name}")
    assert all(layer.reused for layer in again.layers) and again.bytes_reused == report.bytes_fetched - len(
        image.manifest) - len(image.config)


def test_the_command_line_finds_containerd_as_ctr_does(
    containerd: Containerd, images: dict[str, tuple[TestImage, str]], tmp_path: Path
) -> None:
    """`pull containerd:NS/NAME`: the address from CONTAINERD_ADDRESS (as ctr), the root from
    --containerd-root; -v says how the layers were read."""
    image, name = images["imported"]
    env = {**os.environ, "CONTAINERD_ADDRESS": str(containerd.socket)}
    root = str(containerd.workdir / "root")
    done = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "cache"), "--json", "-v",
                           "pull", f"containerd:{NAMESPACE}/{name}", "--containerd-root", root],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["route"] == "containerd" and report["digest"] == image.manifest_digest
    assert "layers read through containerd" in done.stderr
    listed = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "cache"), "ls"],
                            capture_output=True, text=True)
    assert f"containerd:{NAMESPACE}/{name}" in listed.stdout


def test_a_cache_on_another_file_system_gets_copies(
    containerd: Containerd, images: dict[str, tuple[TestImage, str]]
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lh-ctd-", dir="/dev/shm"))  # tmpfs: not the content store's file system
    store = BlobStore(folder / "cache")
    try:
        report = _pull(containerd, store, f"{NAMESPACE}/docker.io/lh/ctd-imported:1")
        for layer in images["imported"][0].layers:
            ours = store.path(parse_digest(layer.digest))
            assert os.stat(ours).st_ino != os.stat(_content(containerd, layer.digest)).st_ino
            assert ours.read_bytes() == _content(containerd, layer.digest).read_bytes()
        assert not any(layer.reused for layer in report.layers)
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_corrupted_content_blob_is_refused_and_nothing_is_stored(
    containerd: Containerd, store: BlobStore, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "bad", [random_layer(50_000, 1715), random_layer(60_000, 1716)], tag="t")
    _import(containerd, image, "docker.io/lh/ctd-bad:1")
    victim = _content(containerd, image.layers[1].digest)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(data))
    os.chmod(victim, 0o444)
    with pytest.raises(DigestMismatch) as error:
        _pull(containerd, store, f"{NAMESPACE}/docker.io/lh/ctd-bad:1")
    assert "\n" not in str(error.value) and image.layers[1].digest[7:] in str(error.value)
    assert os.listdir(store.blobs_dir) == [] and store.images() == []  # the good layer was not published either


def test_an_unknown_name_is_one_line(containerd: Containerd, store: BlobStore) -> None:
    with pytest.raises(ImageNotFound, match="not in containerd's namespace 'team'"):
        _pull(containerd, store, f"{NAMESPACE}/docker.io/lh/none:1")
    with pytest.raises(ImageNotFound, match="namespace 'default'"):
        _pull(containerd, store, "docker.io/lh/ctd-imported:1")  # it lives in another namespace


def test_namespace_and_name_are_told_apart() -> None:
    alpine = "docker.io/library/alpine:3.20"
    assert parse(f"k8s.io/{alpine}") == ContainerdSource("k8s.io", alpine)
    assert parse(alpine) == ContainerdSource("default", alpine)
    assert parse("moby/127.0.0.1:5000/app:1") == ContainerdSource("moby", "127.0.0.1:5000/app:1")
    assert parse("app:1") == ContainerdSource("default", "app:1")
    with pytest.raises(InvalidReference):
        parse("")
    with pytest.raises(InvalidReference):
        parse("b@d/docker.io/x/y:1")


class _DockerEngine(socketserver.StreamRequestHandler):
    """A Docker 25+ Engine API with the containerd image store, for the three calls a pull makes
    before it reads containerd's content: dockerd 20.10 on these machines has no containerd store.
    The content itself is the real containerd's."""

    def handle(self) -> None:
        path = self.rfile.readline().decode("latin-1").split()[1]
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        answers: dict[str, object] = self.server.answers  # type: ignore[attr-defined]
        self.server.paths.append(path)  # type: ignore[attr-defined]
        body = json.dumps(answers.get(path.removeprefix("/v1.47"), {"message": "no such thing"})).encode()
        status = "200 OK" if path.removeprefix("/v1.47") in answers else "404 Not Found"
        self.wfile.write(f"HTTP/1.1 {status}\r\nApi-Version: 1.47\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def test_docker_with_the_containerd_store_reads_containerd_content(
    containerd: Containerd, store: BlobStore, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "moby", [random_layer(70_000, 1717), random_layer(9_000, 1718)], tag="t")
    _import(containerd, image, "docker.io/library/app:1", namespace="moby")
    server = socketserver.ThreadingUnixStreamServer(str(tmp_path / "docker.sock"), _DockerEngine)
    server.answers = {  # type: ignore[attr-defined]
        "/_ping": "OK",
        "/info": {"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
                  "DockerRootDir": str(tmp_path / "docker-root")},
        "/images/app:1/json": {"Id": image.manifest_digest, "RepoTags": ["app:1"],
                               "RootFS": {"Type": "layers", "Layers": image.diff_ids}},
    }
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        report = pull_from_daemon(store, DaemonSource("app:1"), docker_host=f"unix://{tmp_path}/docker.sock",
                                  containerd_root=str(containerd.workdir / "root"))
    finally:
        server.shutdown()
        server.server_close()
    assert report.route == "containerd" and report.ref == "docker-daemon:docker.io/library/app:1"
    assert not any(path.endswith("/get") for path in server.paths)  # type: ignore[attr-defined]
    assert report.digest == image.manifest_digest
    for layer in image.layers:
        ours = os.stat(store.path(parse_digest(layer.digest)))
        assert ours.st_ino == os.stat(_content(containerd, layer.digest)).st_ino
