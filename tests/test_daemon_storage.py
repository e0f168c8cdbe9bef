"""docker-daemon: layers read straight from the private dockerd's overlay2 storage (issue 17).

Witnesses the code under test cannot fake: the daemon's debug log (no ``GET /images/…/get``),
``docker save`` run by the docker CLI (the layer tars the pull must equal byte for byte), the
kernel's count of bytes this process read (``/proc/self/io``), and the store's files.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.errors import DirectReadRefused, LayerhoardError
from cache.formats.tar_split import FileEntry, Segment, confined_parts, records
from cache.model.digest import Digest, parse_digest
from cache.model.refs import DaemonSource
from cache.sources import layer_rebuild
from cache.sources.daemon import pull_from_daemon
from cache.sources.dockerd_storage import DockerdStorage, chain_ids, daemon_storage
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import build_image, load_into_daemon, random_layer, tar_of
from tests.second_user import pull_as_member
from tests.services import Daemon, start_daemon
from tests.storage_reads import read_bytes, stored_tar, write_layer_shapes

pytestmark = pytest.mark.daemon

BASE = random_layer(3_000_000, 1701)  # random: what the base costs to read shows in the byte count
NEW_FILE = 60_000  # the one file of the new layer: its bytes come from the diff folder, the rest from tar-split
NEW = random_layer(NEW_FILE, 1702)


def _build(dockerd: Daemon, context: Path, name: str, dockerfile: str) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    os.environ["DOCKER_BUILDKIT"] = "0"  # the classic builder: dockerd 20.10 writes the layers itself
    try:
        dockerd.docker("build", "-q", "-t", name, str(context), check=True)
    finally:
        del os.environ["DOCKER_BUILDKIT"]


@pytest.fixture(scope="module")
def images(dockerd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A loaded base, an app with one small layer on it, a layer with whiteouts, and built images
    with the shapes real layers have (folders, links, empty files, a name that is not UTF-8)."""
    root = tmp_path_factory.mktemp("storage-images")
    whiteouts = tar_of({"layer1701/.wh.data.bin": b"", "etc/.wh..wh..opq": b"", "etc/new.conf": b"x = 1\n"})
    for name, layers in (("lh/sbase:1", [BASE]), ("lh/sapp:1", [BASE, NEW]), ("lh/swh:1", [BASE, whiteouts])):
        image = build_image(root / name.replace("/", "-").replace(":", "-"), layers, tag="t")
        load_into_daemon(image.layout, "t", dockerd, name)
    context = root / "build"
    files = context / "files"
    write_layer_shapes(files)
    _build(dockerd, context, "lh/sbuilt:1", "FROM lh/sbase:1\nCOPY files /files\nENV MODE=test\nCOPY files/deep /d\n")
    for i in range(2):  # two images whose storage the tamper tests change, one each
        (files / "victim.txt").write_text(f"victim {i}\n" * 100)
        _build(dockerd, context, f"lh/victim:{i}", "FROM scratch\nCOPY files/victim.txt files/big.bin /v/\n")
    return {"base": "lh/sbase:1", "app": "lh/sapp:1", "whiteouts": "lh/swh:1", "built": "lh/sbuilt:1"}


def _saved_layers(dockerd: Daemon, name: str, workdir: Path) -> list[bytes]:
    """The image's layer tars as `docker save -o` writes them, in the config's order."""
    archive = workdir / "saved.tar"
    dockerd.docker("save", "-o", str(archive), name, check=True)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = [tar.extractfile(path).read() for path in manifest[0]["Layers"]]  # type: ignore[union-attr]
    archive.unlink()
    return layers


def _inspect(dockerd: Daemon, name: str) -> dict:  # type: ignore[type-arg]
    return dockerd.client().api.inspect_image(name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("which", ["built", "whiteouts", "app"])
def test_cold_pull_reads_overlay2_without_save_and_equals_docker_save(
    dockerd: Daemon, images: dict[str, str], store: BlobStore, tmp_path: Path, which: str
) -> None:
    name = images[which]
    mark = dockerd.mark()
    report = pull_from_daemon(store, DaemonSource(name), docker_host=dockerd.host)
    assert dockerd.save_calls(mark) == []  # not a single GET /images/…/get
    assert report.route == "overlay2" and report.fallback is None
    inspected = _inspect(dockerd, name)
    assert [layer.diff_id for layer in report.layers] == inspected["RootFS"]["Layers"]
    assert str(load_image(store, report.ref).config.digest) == inspected["Id"]
    saved = _saved_layers(dockerd, name, tmp_path)
    for layer, tar in zip(report.layers, saved, strict=True):
        assert stored_tar(store, layer.digest) == tar  # byte for byte what docker save gives
    assert report.bytes_fetched == sum(len(tar) for tar in saved)


def test_one_new_layer_on_a_stored_base_reads_only_that_layer(
    dockerd: Daemon, images: dict[str, str], store: BlobStore
) -> None:
    pull_from_daemon(store, DaemonSource(images["base"]), docker_host=dockerd.host)
    before = read_bytes()
    mark = dockerd.mark()
    report = pull_from_daemon(store, DaemonSource(images["app"]), docker_host=dockerd.host)
    read = read_bytes() - before
    assert dockerd.save_calls(mark) == [] and report.route == "overlay2"
    assert [layer.reused for layer in report.layers] == [True, False]
    assert report.bytes_fetched == len(NEW)
    assert NEW_FILE <= read < len(BASE) // 4  # the 3 MB base was never read, not even to hash it


def _layer_folder(dockerd: Daemon, name: str) -> tuple[Path, Path]:
    """The image's top layer in the daemon's storage: its layerdb folder and its diff folder."""
    data = dockerd.workdir / "data"
    diff_ids = [parse_digest(d) for d in _inspect(dockerd, name)["RootFS"]["Layers"]]
    layerdb = data / "image" / "overlay2" / "layerdb" / "sha256" / chain_ids(diff_ids)[-1].hex
    return layerdb, data / "overlay2" / (layerdb / "cache-id").read_text().strip() / "diff"


def _pull_refused_or_right(dockerd: Daemon, store: BlobStore, name: str, why: str) -> None:
    """The direct read is refused (saying ``why`` at -v); the fallback docker save then either gives
    the right image or fails (dockerd checks its own files too): never a wrong layer stored."""
    try:
        report = pull_from_daemon(store, DaemonSource(name), docker_host=dockerd.host)
    except LayerhoardError as error:
        assert "\n" not in str(error) and why in str(error)  # the save's failure, and why it was needed
        assert os.listdir(store.blobs_dir) == [] and os.listdir(store.ingest_dir) == []  # nothing, not even partly
        assert store.index.blobs_for_diff_id(parse_digest(_inspect(dockerd, name)["RootFS"]["Layers"][-1])) == {}
        return
    assert report.route == "docker save" and why in (report.fallback or "")
    for layer in report.layers:
        assert "sha256:" + hashlib.sha256(stored_tar(store, layer.digest)).hexdigest() == layer.diff_id


def test_a_changed_file_in_the_diff_folder_is_refused(
    dockerd: Daemon, images: dict[str, str], store: BlobStore
) -> None:
    _, diff = _layer_folder(dockerd, "lh/victim:0")
    victim = diff / "v" / "victim.txt"
    victim.write_bytes(victim.read_bytes().replace(b"victim", b"VICTIM"))  # same size, other bytes
    _pull_refused_or_right(dockerd, store, "lh/victim:0", "hashes to")


def test_a_symlink_out_of_the_diff_folder_is_not_followed(
    dockerd: Daemon, images: dict[str, str], store: BlobStore, tmp_path: Path
) -> None:
    _, diff = _layer_folder(dockerd, "lh/victim:1")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((diff / "v" / "big.bin").read_bytes())  # even the right bytes: a link is refused
    (diff / "v" / "big.bin").unlink()
    os.symlink(outside, diff / "v" / "big.bin")
    _pull_refused_or_right(dockerd, store, "lh/victim:1", "big.bin")


def test_a_layer_the_daemon_deletes_while_it_is_read_fails_cleanly(
    dockerd: Daemon, images: dict[str, str], store: BlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The layer's folder goes away after the first file was read (as `docker rmi` would remove it)."""
    _, diff = _layer_folder(dockerd, images["built"])
    aside = tmp_path / "aside"
    original = layer_rebuild.LayerFolder.open
    opened: list[bytes] = []
    once = threading.Lock()  # two layers are rebuilt at once: the folder is moved by one of them only

    def open_then_lose_the_folder(folder: object, name: bytes, size: int) -> int:
        with once:
            if opened and not aside.exists():
                shutil.move(str(diff), aside)
            opened.append(name)
        return original(folder, name, size)  # type: ignore[arg-type]

    monkeypatch.setattr(layer_rebuild.LayerFolder, "open", open_then_lose_the_folder)
    try:
        _pull_refused_or_right(dockerd, store, images["built"], "No such file or directory")
    finally:
        if aside.exists():
            shutil.move(str(aside), diff)
    assert len(opened) >= 2


def test_a_tar_split_naming_a_path_outside_is_refused(
    dockerd: Daemon, images: dict[str, str], store: BlobStore
) -> None:
    layerdb, _ = _layer_folder(dockerd, images["app"])
    record = layerdb / "tar-split.json.gz"
    original = record.read_bytes()
    lines = [json.loads(line) for line in gzip.decompress(original).splitlines()]
    entry = next(line for line in lines if line["type"] == 1 and line.get("size"))
    entry["name"] = "../../../../../../etc/hostname"
    record.write_bytes(gzip.compress(b"".join(json.dumps(line).encode() + b"\n" for line in lines)))
    try:
        _pull_refused_or_right(dockerd, store, images["app"], "outside the layer's folder")
    finally:
        record.write_bytes(original)


@pytest.fixture(scope="module")
def vfs_dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from start_daemon(tmp_path_factory.mktemp("vfs-dockerd"), ("--storage-driver", "vfs"))


def test_vfs_layers_are_read_from_the_whole_file_system_folders(
    vfs_dockerd: Daemon, store: BlobStore, tmp_path: Path
) -> None:
    """vfs keeps each layer as the whole file system after it; the files a layer's tar-split names
    hold that layer's bytes there, so the replay gives the same tar as the save."""
    image = build_image(tmp_path / "layout", [BASE, NEW, tar_of({"layer1701/data.bin": b"replaced\n"})], tag="t")
    load_into_daemon(image.layout, "t", vfs_dockerd, "lh/vfs:1")
    mark = vfs_dockerd.mark()
    report = pull_from_daemon(store, DaemonSource("lh/vfs:1"), docker_host=vfs_dockerd.host)
    assert vfs_dockerd.save_calls(mark) == [] and report.route == "vfs"
    saved = _saved_layers(vfs_dockerd, "lh/vfs:1", tmp_path)
    assert [stored_tar(store, layer.digest) for layer in report.layers] == saved


def test_a_user_who_cannot_read_the_data_root_falls_back_to_save(
    dockerd: Daemon, images: dict[str, str], member: tuple[int, int]
) -> None:
    mark = dockerd.mark()
    route, fallback = pull_as_member(member, dockerd.socket, images["base"])
    assert route == "docker save", fallback
    assert f"cannot read the daemon's data root {dockerd.workdir / 'data'}: Permission denied" in fallback
    assert len(dockerd.save_calls(mark)) == 1


def test_a_user_who_owns_the_data_root_reads_it_directly(member: tuple[int, int], tmp_path: Path) -> None:
    """Rootless docker's case: the data root is the pulling user's own (in their home), so a user
    who is not root reads the new layers from it, with no save. Here a private dockerd's data root
    is handed to the second user, which is what a rootless daemon's storage looks like to its user."""
    top = Path(tempfile.mkdtemp(prefix="lh-owned-", dir="/tmp"))  # not under pytest's 0700 folders
    os.chmod(top, 0o755)
    daemons = start_daemon(top)
    owned = next(daemons)
    try:
        image = build_image(tmp_path / "layout", [BASE, NEW], tag="t")
        load_into_daemon(image.layout, "t", owned, "lh/owned:1")
        subprocess.run(["chown", "-R", f"{member[0]}:{member[1]}", str(top / "data")], check=True)
        mark = owned.mark()
        route, fallback = pull_as_member(member, owned.socket, "lh/owned:1")
        assert (route, fallback) == ("overlay2", None)
        assert owned.save_calls(mark) == []
    finally:
        daemons.close()  # stops the daemon
        shutil.rmtree(top, ignore_errors=True)


def test_a_daemon_on_another_driver_falls_back_to_save(tmp_path: Path) -> None:
    with pytest.raises(DirectReadRefused, match="storage driver is 'btrfs', not overlay2 or vfs"):
        daemon_storage({"Driver": "btrfs", "DockerRootDir": "/var/lib/docker"})
    with pytest.raises(DirectReadRefused, match="did not answer /info"):
        daemon_storage(None)
    with pytest.raises(DirectReadRefused, match=f"^{tmp_path} has no image/overlay2/layerdb: not a dockerd data root$"):
        DockerdStorage(str(tmp_path), "overlay2")


def test_the_fallback_env_streams_docker_save(
    dockerd: Daemon, images: dict[str, str], store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERHOARD_NO_DAEMON_STORAGE", "1")
    mark = dockerd.mark()
    report = pull_from_daemon(store, DaemonSource(images["base"]), docker_host=dockerd.host)
    assert len(dockerd.save_calls(mark)) == 1
    assert report.route == "docker save" and report.fallback == "LAYERHOARD_NO_DAEMON_STORAGE is set"


def _tar_split(items: list[dict]) -> io.BytesIO:  # type: ignore[type-arg]
    return io.BytesIO(gzip.compress(b"".join(json.dumps(item).encode() + b"\n" for item in items)))


def test_tar_split_records_are_read_strictly() -> None:
    good = _tar_split([
        {"type": 2, "payload": base64.b64encode(b"header").decode(), "position": 0},
        {"type": 1, "name": "a/b", "size": 3, "payload": "AAAAAAAAAAA=", "position": 1},
        {"type": 1, "name_raw": base64.b64encode(b"caf\xe9").decode(), "position": 2},
    ])
    assert list(records(good, "t")) == [Segment(b"header"), FileEntry(b"a/b", 3), FileEntry(b"caf\xe9", 0)]
    bad = [
        [{"type": 2, "payload": "", "position": 1}],  # positions count from 0
        [{"type": 3, "position": 0}],
        [{"type": 1, "name": "a", "size": -1, "position": 0}],
        [{"type": 2, "payload": "not base64!", "position": 0}],
    ]
    for items in bad:
        with pytest.raises(DirectReadRefused):
            list(records(_tar_split(items), "t"))
    with pytest.raises(DirectReadRefused, match="not a readable gzip"):
        list(records(io.BytesIO(b"plain text"), "t"))
    assert confined_parts(b"./a//b/") == [b"a", b"b"]
    assert confined_parts(b"a/../../b") is None and confined_parts(b"./") is None


def test_chain_ids_are_dockers() -> None:
    """chainID(n) = sha256(chainID(n-1) + " " + diffID(n)), as the image spec defines it."""
    a, b = Digest("a" * 64), Digest("b" * 64)
    expected = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert [str(c) for c in chain_ids([a, b])] == [str(a), expected]
