"""docker-daemon: through podman's Docker-compatible API (`podman system service`), as a new user
would point layerhoard at it (issue 17 item 3), on podman's two readable drivers, vfs and overlay.

podman's ``/info`` names its containers-storage graph root, and new layers are rebuilt from it
(each layer's tar-split record and folder, found in ``<driver>-layers/layers.json``) without a
save. Witnesses the code under test cannot fake: the service's own access log (no ``GET
/images/…/get``), `podman save` run by the podman CLI (the layer tars a pull must equal byte for
byte), podman's inspect, the kernel's count of bytes this process read (``/proc/self/io``), and the
store's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.errors import DirectReadRefused, LayerhoardError
from cache.model.digest import parse_digest
from cache.model.refs import DaemonSource
from cache.sources import layer_rebuild
from cache.sources.containers_storage import ContainersStorage, parse_layers, podman_storage
from cache.sources.daemon import pull_from_daemon
from cache.sources.layer_rebuild import rebuild_layers
from cache.sources.staging import Staging
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import build_image, random_layer, tar_of
from tests.second_user import pull_as_member
from tests.services import skopeo, stop_process, unavailable, wait_until
from tests.storage_reads import read_bytes, stored_tar, write_layer_shapes

BASE = random_layer(3_000_000, 1721)  # random: what the base costs to read shows in the byte count
NEW_FILE = 60_000
NEW = random_layer(NEW_FILE, 1722)
WHITEOUTS = tar_of({"layer1721/.wh.data.bin": b"", "etc/.wh..wh..opq": b"", "etc/new.conf": b"x = 1\n"})
IMAGES = {"base": "localhost/lh/pbase:1", "app": "localhost/lh/papp:1", "whiteouts": "localhost/lh/pwh:1",
          "built": "localhost/lh/pbuilt:1", "victim": "localhost/lh/pvictim:1"}


class PodmanService:
    """`podman system service` on a socket of its own, over a private store of one driver. At log
    level info the service writes an access log line per request."""

    def __init__(self, workdir: Path, driver: str) -> None:
        self.workdir = workdir
        self.driver = driver
        self.root = workdir / "root"
        self.socket = workdir / "podman.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = workdir / "service.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*self.podman_args(), "--log-level", "info", "system", "service",
                                         "--time=0", self.host], stdout=self._log, stderr=subprocess.STDOUT)

    def podman_args(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.workdir / "run"),
                "--storage-driver", self.driver, "--events-backend", "file"]

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.podman_args(), *args], capture_output=True, text=True, timeout=120)

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"podman system service exited with {self.process.returncode}")
        return self.socket.exists()

    def mark(self) -> int:
        return self.log_path.stat().st_size

    def save_calls(self, since: int) -> list[str]:
        """The paths of the save requests (``GET …/images/…/get``) the service logged after ``since``."""
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        return re.findall(r'"GET (\S*/images/\S*/get\S*) HTTP', text)

    def requests(self, since: int) -> int:
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            return len(re.findall(rb'"(?:GET|POST|HEAD) \S+ HTTP', handle.read()))

    def inspect(self, name: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.podman("image", "inspect", name).stdout)[0]  # type: ignore[no-any-return]

    def saved_layers(self, name: str) -> list[bytes]:
        """The image's layer tars as `podman save` writes them, in the config's order."""
        archive = self.workdir / "saved.tar"
        saved = self.podman("save", "-o", str(archive), name)
        assert saved.returncode == 0, saved.stderr
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            layers = [tar.extractfile(path).read() for path in manifest[0]["Layers"]]  # type: ignore[union-attr]
        archive.unlink()
        return layers

    def layer_folder(self, name: str) -> Path:
        """The folder of the files of the image's top layer (the only layer of that diff_id here)."""
        top = self.inspect(name)["RootFS"]["Layers"][-1]
        layers = json.loads((self.root / f"{self.driver}-layers" / "layers.json").read_text())
        (layer_id,) = [layer["id"] for layer in layers if layer.get("diff-digest") == top]
        if self.driver == "overlay":
            return self.root / "overlay" / layer_id / "diff"
        return self.root / "vfs" / "dir" / layer_id

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()
        self.podman("system", "reset", "--force")  # unmounts what the overlay driver mounted


def _build(podman: PodmanService, context: Path, name: str, dockerfile: str) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    built = podman.podman("build", "-q", "-t", name, str(context))
    assert built.returncode == 0, built.stderr


@pytest.fixture(scope="module", params=["vfs", "overlay"])
def podman(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    """podman over a private store, holding: a loaded base, an app with one small layer on it, a
    whiteout layer, a built image with the shapes real layers have (folders, links, empty files, a
    name that is not UTF-8), and a victim image whose files a test changes."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman)")
    if os.geteuid() != 0:
        unavailable("podman with a private store in a temporary folder needs root here")
    workdir = Path(tempfile.mkdtemp(prefix="lh-pms-", dir="/tmp"))  # short: podman refuses a long runroot
    service = PodmanService(workdir, request.param)
    try:
        try:
            wait_until(service.answers, 30, "podman system service")
        except RuntimeError as error:
            unavailable(str(error))
        root = tmp_path_factory.mktemp(f"podman-{request.param}")
        for key, layers in (("base", [BASE]), ("app", [BASE, NEW]), ("whiteouts", [BASE, WHITEOUTS])):
            image = build_image(root / key / "layout", layers, tag="t")
            archive = root / key / "image.tar"
            skopeo("copy", "--quiet", f"oci:{image.layout}:t", f"docker-archive:{archive}:{IMAGES[key]}")
            loaded = service.podman("load", "-i", str(archive))
            assert loaded.returncode == 0, loaded.stderr
        context = root / "build"
        files = context / "files"
        write_layer_shapes(files)
        _build(service, context, IMAGES["built"], f"FROM {IMAGES['base']}\nCOPY files /files\nENV MODE=test\n")
        (files / "victim.txt").write_text("victim\n" * 100)
        _build(service, context, IMAGES["victim"], "FROM scratch\nCOPY files/victim.txt files/big.bin /v/\n")
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("which", ["built", "whiteouts", "app"])
def test_cold_pull_reads_containers_storage_without_save_and_equals_podman_save(
    podman: PodmanService, store: BlobStore, which: str
) -> None:
    name = IMAGES[which]
    mark = podman.mark()
    report = pull_from_daemon(store, DaemonSource(name), docker_host=podman.host)
    assert podman.requests(mark) >= 2 and podman.save_calls(mark) == []  # the log works; no save asked
    assert report.route == f"containers-storage {podman.driver}" and report.fallback is None
    inspected = podman.inspect(name)
    assert [layer.diff_id for layer in report.layers] == inspected["RootFS"]["Layers"]
    assert str(load_image(store, report.ref).config.digest) == f"sha256:{inspected['Id'].removeprefix('sha256:')}"
    saved = podman.saved_layers(name)
    assert [stored_tar(store, layer.digest) for layer in report.layers] == saved  # byte for byte podman's save
    assert report.bytes_fetched == sum(len(tar) for tar in saved)


def test_cached_then_by_id_reads_nothing(podman: PodmanService, store: BlobStore) -> None:
    cold = pull_from_daemon(store, DaemonSource(IMAGES["app"]), docker_host=podman.host)
    assert cold.ref == f"docker-daemon:{IMAGES['app']}" and not any(layer.reused for layer in cold.layers)
    blobs = set(os.listdir(store.blobs_dir))
    mark = podman.mark()
    cached = pull_from_daemon(store, DaemonSource(IMAGES["app"]), docker_host=podman.host)
    assert cached.route == "store" and cached.bytes_fetched == 0 and cached.digest == cold.digest
    assert set(os.listdir(store.blobs_dir)) == blobs and podman.save_calls(mark) == []
    image_id = podman.inspect(IMAGES["app"])["Id"].removeprefix("sha256:")
    by_id = pull_from_daemon(store, DaemonSource(image_id[:12]), docker_host=podman.host)
    assert by_id.route == "store" and by_id.ref == cold.ref and by_id.digest == cold.digest


def test_one_new_layer_on_a_stored_base_reads_only_that_layer(podman: PodmanService, store: BlobStore) -> None:
    pull_from_daemon(store, DaemonSource(IMAGES["base"]), docker_host=podman.host)
    before = read_bytes()
    mark = podman.mark()
    report = pull_from_daemon(store, DaemonSource(IMAGES["app"]), docker_host=podman.host)
    read = read_bytes() - before
    assert podman.save_calls(mark) == [] and report.route == f"containers-storage {podman.driver}"
    assert [layer.reused for layer in report.layers] == [True, False]
    assert report.bytes_fetched == len(NEW)
    assert NEW_FILE <= read < len(BASE) // 4  # the 3 MB base was never read, not even to hash it


def _pull_falls_back(podman: PodmanService, store: BlobStore, name: str, why: str) -> None:
    """The direct read is refused and the save asked for, once. podman checks its own files when it
    saves (a crc64 per file), so where its storage was changed behind its back the save fails too,
    in one line, with nothing stored; otherwise the save gives the right image and the report says
    ``why`` the storage was not read. Never a wrong layer stored."""
    mark = podman.mark()
    try:
        report = pull_from_daemon(store, DaemonSource(name), docker_host=podman.host)
    except LayerhoardError as error:
        assert "\n" not in str(error) and "refused to save" in str(error)
        assert os.listdir(store.blobs_dir) == [] and os.listdir(store.ingest_dir) == []
    else:
        assert report.route == "docker save" and why in (report.fallback or "")
        for layer in report.layers:
            assert "sha256:" + hashlib.sha256(stored_tar(store, layer.digest)).hexdigest() == layer.diff_id
    assert len(podman.save_calls(mark)) == 1


def test_a_changed_file_in_the_layer_folder_is_refused_and_falls_back(
    podman: PodmanService, store: BlobStore
) -> None:
    """The rebuilt layer does not hash to its diff_id (asked of the rebuild itself, to see why), so
    nothing of it is kept and the pull asks for the save."""
    name = IMAGES["victim"]
    victim = podman.layer_folder(name) / "v" / "victim.txt"
    original = victim.read_bytes()
    victim.write_bytes(original.replace(b"victim", b"VICTIM"))  # same size, other bytes
    try:
        diff_ids = [parse_digest(d) for d in podman.inspect(name)["RootFS"]["Layers"]]
        with ContainersStorage(str(podman.root), podman.driver) as storage:
            staging = Staging(store)
            try:
                with pytest.raises(DirectReadRefused, match=f"layer {diff_ids[-1]} in .* hashes to sha256:"):
                    rebuild_layers(storage, storage.places(diff_ids, {diff_ids[-1]}), staging)
            finally:
                staging.discard()
        _pull_falls_back(podman, store, name, "hashes to")
    finally:
        victim.write_bytes(original)


def test_a_layers_json_that_does_not_parse_strictly_falls_back(podman: PodmanService, store: BlobStore) -> None:
    """An entry layerhoard refuses (an id that is not a layer ID) though podman's own parser takes
    it: nothing is read from the storage, the save gives the right image, and the report says why."""
    layers_json = podman.root / f"{podman.driver}-layers" / "layers.json"
    original = layers_json.read_bytes()
    entries = json.loads(original)
    layers_json.write_text(json.dumps([*entries, {"id": "../not-a-layer-id", "created": entries[0]["created"]}]))
    try:
        mark = podman.mark()
        report = pull_from_daemon(store, DaemonSource(IMAGES["app"]), docker_host=podman.host)
    finally:
        layers_json.write_bytes(original)
    assert report.route == "docker save" and len(podman.save_calls(mark)) == 1
    assert report.fallback == f"{layers_json}: entry {len(entries)} has an id that is not a layer ID"
    assert [layer.diff_id for layer in report.layers] == podman.inspect(IMAGES["app"])["RootFS"]["Layers"]


def test_layers_are_found_by_their_chain_from_the_bottom(podman: PodmanService) -> None:
    """In podman's real layers.json: the app's layers in their order are found, each on the one
    below it; the same diff_ids in another order name no such chain and are refused."""
    base, new = (parse_digest(d) for d in podman.inspect(IMAGES["app"])["RootFS"]["Layers"])
    with ContainersStorage(str(podman.root), podman.driver) as storage:
        (place,) = storage.places([base, new], {new})
        assert place.diff_id == new and place.tar_split[-1].endswith(".tar-split.gz") and place.size == len(NEW)
        assert storage.places([base, new], set()) == []
        with pytest.raises(DirectReadRefused, match=f"layers.json has no layer {new} at the bottom"):
            storage.places([new, base], {base})


def test_the_command_line_says_which_route(podman: PodmanService, tmp_path: Path) -> None:
    """`pull --json -v` against podman's socket: the route in the document and on stderr."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "cache"), "--json", "-v",
                           "pull", f"docker-daemon:{IMAGES['base']}", "--docker-host", podman.host],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["route"] == f"containers-storage {podman.driver}" and report["fallback"] is None
    assert f"layers read through containers-storage {podman.driver}" in done.stderr


def test_a_layer_podman_deletes_while_it_is_read_fails_cleanly(
    podman: PodmanService, store: BlobStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The files of the built image's top layer go away after its first file was opened (as `podman
    rmi` removes them): the read is refused and the save asked for, which either fails in one line
    with nothing stored (podman cannot read the layer either) or gives the right image."""
    top = podman.inspect(IMAGES["built"])["RootFS"]["Layers"][-1]
    folder = podman.layer_folder(IMAGES["built"])
    aside = tmp_path / "aside"
    aside.mkdir()
    original = layer_rebuild.LayerFolder.open
    opened: list[bytes] = []

    def open_then_lose_the_files(self: layer_rebuild.LayerFolder, name: bytes, size: int) -> int:
        if f"layer {top} " in self._what:  # type: ignore[attr-defined]
            if len(opened) == 1:
                for entry in os.listdir(folder):
                    shutil.move(str(folder / entry), aside / entry)
            opened.append(name)
        return original(self, name, size)

    monkeypatch.setattr(layer_rebuild.LayerFolder, "open", open_then_lose_the_files)
    try:
        _pull_falls_back(podman, store, IMAGES["built"], "No such file or directory")
    finally:
        for entry in os.listdir(aside):
            shutil.move(str(aside / entry), folder / entry)
    assert len(opened) >= 2


def test_a_user_who_cannot_read_the_graph_root_falls_back_to_save(
    podman: PodmanService, member: tuple[int, int]
) -> None:
    mark = podman.mark()
    route, fallback = pull_as_member(member, podman.socket, IMAGES["base"])
    assert route == "docker save", fallback
    assert fallback == f"cannot read the daemon's data root {podman.root}: Permission denied"
    assert len(podman.save_calls(mark)) == 1


def test_layers_json_is_read_strictly() -> None:
    layer = "a" * 64
    good = [{"id": layer, "diff-digest": f"sha256:{'b' * 64}", "diff-size": 10, "flags": {"incomplete": True}},
            {"id": "c" * 64, "parent": layer}]
    parsed = parse_layers(json.dumps(good).encode(), "l.json")
    assert [(p.id, p.parent, p.diff_id, p.size, p.incomplete) for p in parsed] == [
        (layer, None, f"sha256:{'b' * 64}", 10, True), ("c" * 64, layer, None, None, False)]
    bad = {
        b"{not json": "l.json is not JSON",
        b"{}": "l.json is not a list of layers",
        b"[1]": "l.json: entry 0 is not an object",
        json.dumps([{"id": "../../etc"}]).encode(): "entry 0 has an id that is not a layer ID",
        json.dumps([{"id": layer, "parent": "x/y"}]).encode(): "entry 0 has a parent that is not a layer ID",
        json.dumps([{"id": layer, "diff-digest": "md5:00"}]).encode(): "entry 0 has a diff-digest that is not",
        json.dumps([{"id": layer, "diff-size": "10"}]).encode(): "entry 0 has a diff-size that is not a number",
        json.dumps([{"id": layer, "flags": []}]).encode(): "entry 0 has flags that are not an object",
        b"[" * 100_000: "l.json is not JSON",
    }
    for raw, message in bad.items():
        with pytest.raises(DirectReadRefused, match=re.escape(message)):
            parse_layers(raw, "l.json")


def test_podman_on_another_driver_falls_back(tmp_path: Path) -> None:
    with pytest.raises(DirectReadRefused, match="podman's storage driver is 'btrfs', not overlay or vfs"):
        podman_storage({"Driver": "btrfs", "DockerRootDir": "/var/lib/containers/storage", "BuildahVersion": "1"})
    with pytest.raises(DirectReadRefused, match="has no overlay-layers: not a containers-storage graph root"):
        ContainersStorage(str(tmp_path), "overlay")
