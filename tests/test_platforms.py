"""A multi-platform name points at its index (issue 15): `pull --all-platforms`, then a plain pull,
never narrows it to the host's manifest; serve gives an arm64 client (skopeo, podman) the arm64
image; export writes every stored platform, and `--platform` picks one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.formats.index_json import ref_name_of
from cache.ingest.pull import PullOptions, pull
from cache.model.manifests import Platform
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.clients import Podman, start_podman
from tests.images import TestImage, build_image, build_index, push, random_layer
from tests.services import Registry, skopeo
from tests.test_serve import start

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def multi(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, TestImage, TestImage]:
    """(ref, index digest, amd64 image, arm64 image) of a two-platform tag in the registry."""
    root = tmp_path_factory.mktemp("platforms")
    amd = build_image(root, [random_layer(40_000, 70)], platform=("linux", "amd64"), write_tag=False)
    arm = build_image(root, [random_layer(50_000, 71)], platform=("linux", "arm64"), write_tag=False)
    index, _ = build_index(root, [amd, arm], [("linux", "amd64"), ("linux", "arm64")], "multi")
    return push(root, "multi", registry, "plat/multi:1", all_platforms=True), index, amd, arm


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    yield from start_podman()


def named(store: BlobStore, ref: str) -> str:
    return next(str(entry["digest"]) for entry in store.images() if ref_name_of(entry) == ref)


def test_a_plain_pull_after_all_platforms_keeps_the_index(store: BlobStore, multi: tuple[str, str, TestImage,
                                                                                              TestImage]) -> None:
    ref, index, amd, arm = multi
    pull(store, ref, PullOptions(all_platforms=True))
    assert named(store, ref) == index
    plain = pull(store, ref, PullOptions(platform=Platform.parse("linux/amd64")))
    assert plain.digest == amd.manifest_digest  # the report says what this pull chose
    assert named(store, ref) == index  # the name still points at both platforms
    assert str(load_image(store, ref, Platform.parse("linux/arm64")).digest) == arm.manifest_digest


def test_one_platform_pulled_keeps_the_index_and_reads_what_is_stored(
        store: BlobStore, multi: tuple[str, str, TestImage, TestImage], tmp_path: Path) -> None:
    ref, index, _, arm = multi
    pull(store, ref, PullOptions(platform=Platform.parse("linux/arm64")))
    assert named(store, ref) == index
    assert str(load_image(store, ref).digest) == arm.manifest_digest  # the host's is not stored: arm64's
    with pytest.raises(Exception, match="platform linux/amd64 is not in the cache"):
        load_image(store, ref, Platform.parse("linux/amd64"))
    report = export(store, load_image(store, ref), f"oci:{tmp_path / 'out'}:x")
    assert report.digest != index  # an index of the one stored platform
    layout = json.loads((tmp_path / "out" / "index.json").read_text())
    inner = json.loads((tmp_path / "out" / "blobs" / "sha256" / report.digest[7:]).read_text())
    assert layout["manifests"][0]["digest"] == report.digest
    assert [m["digest"] for m in inner["manifests"]] == [arm.manifest_digest]
    config = skopeo("inspect", "--config", "--override-arch", "arm64", f"oci:{tmp_path / 'out'}:x")
    assert json.loads(config.stdout)["rootfs"]["diff_ids"] == arm.diff_ids  # skopeo reads it


def test_export_writes_every_platform_and_platform_picks_one(
        store: BlobStore, multi: tuple[str, str, TestImage, TestImage], tmp_path: Path) -> None:
    ref, index, amd, arm = multi
    pull(store, ref, PullOptions(all_platforms=True))
    whole = export(store, load_image(store, ref), f"oci:{tmp_path / 'all'}:x")
    assert whole.digest == index  # every platform stored, nothing transcoded: the index byte for byte
    for arch, image in (("amd64", amd), ("arm64", arm)):
        config = skopeo("inspect", "--config", "--override-arch", arch, f"oci:{tmp_path / 'all'}:x")
        assert json.loads(config.stdout)["rootfs"]["diff_ids"] == image.diff_ids
    one = export(store, load_image(store, ref, Platform.parse("linux/arm64")), f"oci:{tmp_path / 'one'}:x")
    assert one.digest == arm.manifest_digest


def test_serve_gives_arm64_clients_the_arm64_image(
        store: BlobStore, multi: tuple[str, str, TestImage, TestImage], registry: Registry, tmp_path: Path,
        podman: Podman) -> None:
    ref, _, _, arm = multi
    pull(store, ref, PullOptions(all_platforms=True))
    pull(store, ref)  # a plain pull afterwards: it used to narrow the name to the host's manifest
    with start(store, default_registry=registry.host) as server:
        skopeo("copy", "--quiet", "--src-tls-verify=false", "--override-arch", "arm64",
               f"docker://{server.host}/plat/multi:1", f"oci:{tmp_path / 'arm'}:x")
        pulled = podman("pull", "--tls-verify=false", "--arch", "arm64", f"{server.host}/plat/multi:1")
        assert pulled.returncode == 0, pulled.stderr
        inspected = json.loads(podman("image", "inspect", f"{server.host}/plat/multi:1").stdout)[0]
    copied = json.loads((tmp_path / "arm" / "index.json").read_text())["manifests"][0]["digest"]
    assert copied == arm.manifest_digest
    assert inspected["Architecture"] == "arm64"
    assert "does not match the expected platform" not in pulled.stderr
