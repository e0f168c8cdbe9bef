"""Air-gapped delivery (issue 20): lock files, inventories, delta bundles and their import.

Witnesses the code under test cannot fake: the registry's access log (no tag request, no request
at all), skopeo and podman reading what was delivered, and the bytes of both caches compared
file by file. Images come from bench/workload's generator (pushed with skopeo) and tests.images.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.workload.generator import Generator, Spec, WorkImage, Workload, code_layer
from cache.delivery.lock import read_lock
from cache.errors import DeliveryError
from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore
from cache.store.graph import cosign_tags, link_cosign, link_referrer, referrers
from cache.store.images import blobs_of
from tests.clients import Podman, start_podman
from tests.images import OCI_INDEX, OCI_MANIFEST, build_image, build_index, push, random_layer, sha256
from tests.referrer_makers import SBOM_TYPE, push_blob, put_manifest
from tests.services import Registry, skopeo

pytestmark = pytest.mark.registry


def cli(cache: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *args],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"layerhoard {' '.join(args)} failed: {result.stderr}")
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerhoard: error: "), result.stderr
    return lines[0]


def names(cache: Path) -> dict[str, str]:
    document = json.loads((cache / "index.json").read_text())
    return {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"] for e in document["manifests"]}


def reachable(cache: Path) -> dict[str, bytes]:
    """Every blob the cache's names reach, by digest: the bytes a consumer of it would read."""
    store = BlobStore(cache)
    try:
        digests = {d for top in names(cache).values() for d in blobs_of(store, parse_digest(top))}
        return {d: (cache / "blobs" / "sha256" / d[7:]).read_bytes() for d in digests}
    finally:
        store.close()


def bundle_blobs(bundle: Path) -> dict[str, int]:
    with tarfile.open(bundle) as tar:
        return {"sha256:" + m.name.rsplit("/", 1)[1]: m.size for m in tar.getmembers()
                if m.name.startswith("blobs/sha256/")}


def metadata_state(cache: Path) -> tuple[bytes, list[str], int]:
    store = BlobStore(cache)
    try:
        return (cache / "index.json").read_bytes(), sorted(r for r, _ in store.index.images()), \
            sum(1 for _ in store.index.blobs())
    finally:
        store.close()


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    yield from start_podman()


@pytest.fixture(scope="module")
def workload(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[Generator, Workload]:
    spec = Spec(scale=4 << 20, apps=17, daemon_apps=0, prefix=f"dl{uuid.uuid4().hex[:8]}")
    generator = Generator(spec, tmp_path_factory.mktemp("workload"), registry, None)
    return generator, generator.build()


@pytest.mark.slow
def test_two_deliveries_ship_only_the_change_and_the_site_ends_identical(
        workload: tuple[Generator, Workload], tmp_path: Path, registry: Registry, podman: Podman) -> None:
    generator, built = workload
    refs = [image.ref for image in built.images]
    assert len(refs) == 20
    source, site = tmp_path / "source", tmp_path / "site"
    images = tmp_path / "images.txt"
    images.write_text("\n".join(refs) + "\n")

    # delivery one: everything
    cli(source, "warm", "-f", str(images), "--lock", str(tmp_path / "one.lock"))
    first = tmp_path / "one.tar"
    cli(source, "export", "--locked", str(tmp_path / "one.lock"), f"oci-archive:{first}")
    cli(site, "import", f"oci-archive:{first}")
    assert names(site) == names(source)
    cli(site, "inventory", "-o", str(tmp_path / "site.json"))

    # delivery two: two images get a new top layer (their tags move)
    changed = [built.images[5], built.images[9]]
    before = {image.name: image.diff_ids[-1] for image in changed}
    for seed, image in enumerate(changed):
        generator.rebuild_top_layer(built, image.name, seed=9000 + seed)
    assert all(image.diff_ids[-1] != before[image.name] for image in changed)
    cli(source, "warm", "-f", str(images), "--lock", str(tmp_path / "two.lock"))
    lock_one, lock_two = read_lock(tmp_path / "one.lock"), read_lock(tmp_path / "two.lock")
    moved = {name for name in lock_two.images if lock_two.images[name].digest != lock_one.images[name].digest}
    assert moved == {f"{registry.host}/{image.name}" for image in changed}
    second = tmp_path / "two.tar"
    cli(source, "export", "--locked", str(tmp_path / "two.lock"), "--exclude-from", str(tmp_path / "site.json"),
        f"oci-archive:{second}")

    # the second bundle: every manifest, and of the rest only the two new layers and two new configs
    store = BlobStore(source)
    expected_new = set()
    for name in moved:
        top = parse_digest(lock_two.images[name].digest)
        old = set(blobs_of(store, parse_digest(lock_one.images[name].digest)))
        expected_new |= set(blobs_of(store, top)) - old
    manifests = {str(image.digest) for image in lock_two.images.values()}
    carried = bundle_blobs(second)
    assert set(carried) == {str(d) for d in expected_new} | manifests
    assert len(expected_new) == 6  # per image: the new manifest, config and top layer
    with tarfile.open(second) as tar:
        record = json.loads(tar.extractfile("layerhoard-bundle.json").read())  # type: ignore[union-attr]
    assert record["assumes"] and not set(record["assumes"]) & set(carried)
    print(f"bundle bytes: delivery one {first.stat().st_size}, delivery two {second.stat().st_size}")
    assert second.stat().st_size < first.stat().st_size / 5

    imported = json.loads(cli(site, "--json", "import", f"oci-archive:{second}").stdout)
    assert imported["blobs_imported"] == 4 and imported["assumed"] == len(record["assumes"])
    assert names(site) == names(source)
    assert reachable(site) == reachable(source)  # byte-identical images

    # delivery three: release two's images as locked, plus a new image on a base the site holds
    base = built.images[1]
    new = WorkImage(f"{base.name.split('/')[0]}/new:1", "registry", base.name)
    generator.place(new, [*generator.base_tars[base.name], code_layer(77, 5000)])
    cli(source, "warm", new.ref, "--lock", str(tmp_path / "new.lock"))
    merged = json.loads((tmp_path / "two.lock").read_text())  # what airgap.md's jq line does
    merged["images"].update(json.loads((tmp_path / "new.lock").read_text())["images"])
    (tmp_path / "three.lock").write_text(json.dumps(merged))
    cli(site, "inventory", "-o", str(tmp_path / "site.json"))
    mark = registry.mark()
    cli(source, "warm", "--locked", str(tmp_path / "three.lock"))
    assert registry.requests(mark) == []  # all of it cached: no request at all
    third = tmp_path / "three.tar"
    cli(source, "export", "--locked", str(tmp_path / "three.lock"), "--exclude-from", str(tmp_path / "site.json"),
        f"oci-archive:{third}")
    new_top = read_lock(tmp_path / "new.lock").images[new.ref].digest
    store = BlobStore(source)
    expected = set(blobs_of(store, new_top)) - set(blobs_of(store, parse_digest(names(source)[base.ref])))
    store.close()
    assert set(bundle_blobs(third)) == {str(d) for d in expected} | manifests | {str(new_top)}
    cli(site, "import", f"oci-archive:{third}")
    assert names(site) == names(source) and reachable(site) == reachable(source)

    # skopeo and podman read the site's cache, and skopeo the full bundle
    name = f"{registry.host}/{changed[0].name}"
    inspected = json.loads(skopeo("inspect", f"oci:{site}:{name}").stdout)
    assert inspected["Digest"] == names(source)[name]
    skopeo("copy", "--quiet", f"oci-archive:{first}:{f'{registry.host}/{built.images[0].name}'}",
           f"oci:{tmp_path / 'out'}:x")
    pulled = podman("pull", "-q", f"oci:{site}:{name}")
    assert pulled.returncode == 0, pulled.stderr
    listed = podman("image", "inspect", pulled.stdout.strip(), "--format", "{{.Digest}}")
    assert listed.returncode == 0, listed.stderr
    base = f"{registry.host}/{built.images[0].name}"
    from_bundle = podman("pull", "-q", f"oci-archive:{first}:{base}")
    assert from_bundle.returncode == 0, from_bundle.stderr


def test_lock_rebuild_after_the_tag_moved_gets_the_locked_digest_with_no_tag_request(
        registry: Registry, tmp_path: Path) -> None:
    repo = f"lock{uuid.uuid4().hex[:8]}/app:1"
    first = build_image(tmp_path / "one", [random_layer(40_000, 1), random_layer(30_000, 2)])
    ref = push(first.layout, first.tag, registry, repo)
    lock = tmp_path / "app.lock"
    cli(tmp_path / "builder", "warm", ref, "--lock", str(lock))
    assert read_lock(lock).images[ref].digest == first.manifest_digest

    moved = build_image(tmp_path / "two", [random_layer(40_000, 1), random_layer(30_000, 3)])
    push(moved.layout, moved.tag, registry, repo)  # the tag moves

    mark = registry.mark()
    cli(tmp_path / "rebuild", "warm", "--locked", str(lock))
    manifests = [r.path for r in registry.requests(mark) if "/manifests/" in r.path]
    assert manifests and all(path.endswith(f"/manifests/{first.manifest_digest}") for path in manifests)
    assert names(tmp_path / "rebuild") == {ref: first.manifest_digest}

    mark = registry.mark()
    cli(tmp_path / "rebuild", "warm", "--locked", str(lock))  # fully cached: no request at all
    assert registry.requests(mark) == []


def test_a_locked_digest_missing_everywhere_fails_naming_the_image(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(20_000, 4)])
    ref = push(image.layout, image.tag, registry, f"gone{uuid.uuid4().hex[:8]}/app:2")
    lock = tmp_path / "app.lock"
    cli(tmp_path / "builder", "warm", ref, "--lock", str(lock))
    document = json.loads(lock.read_text())
    document["images"][ref]["digest"] = "sha256:" + "ab" * 32
    document["images"][ref]["platforms"] = {"linux/amd64": "sha256:" + "ab" * 32}
    lock.write_text(json.dumps(document))
    result = cli(tmp_path / "rebuild", "warm", "--locked", str(lock), check=False)
    assert result.returncode == 1
    assert f"failed: {ref}: locked digest sha256:{'ab' * 32} cannot be had" in result.stdout


def lock_and_bundle(registry: Registry, tmp_path: Path, seed: int) -> tuple[str, Path, Path, Path]:
    """An image of two layers pushed, warmed and locked in a source cache: (ref, source, lock, layout)."""
    image = build_image(tmp_path / f"img{seed}", [random_layer(50_000, seed), random_layer(20_000, seed + 1)])
    ref = push(image.layout, image.tag, registry, f"base{uuid.uuid4().hex[:8]}/app:1")
    source, lock = tmp_path / "source", tmp_path / f"{seed}.lock"
    cli(source, "warm", ref, "--lock", str(lock))
    return ref, source, lock, image.layout


def test_a_bundle_whose_base_blob_the_site_lacks_is_refused_and_nothing_is_stored(
        registry: Registry, tmp_path: Path) -> None:
    ref, source, lock, layout = lock_and_bundle(registry, tmp_path, 10)
    bundle = tmp_path / "delta.tar"
    # the exclusion claims the site holds the image's layers (as an oci: layout of it would)
    cli(source, "export", "--locked", str(lock), "--exclude-from", f"oci:{layout}", f"oci-archive:{bundle}")
    assert len(bundle_blobs(bundle)) == 1  # the manifest alone
    site = tmp_path / "site"
    other_ref, _, other_lock, _ = lock_and_bundle(registry, tmp_path, 20)
    cli(source, "export", "--locked", str(other_lock), f"oci:{tmp_path / 'first'}")
    cli(site, "import", f"oci:{tmp_path / 'first'}")
    before = metadata_state(site)
    blobs_before = sorted(os.listdir(site / "blobs" / "sha256"))
    line = one_line_error(cli(site, "import", f"oci-archive:{bundle}", check=False))
    assert "assumes this cache holds blob" in line and "nothing was imported" in line
    assert metadata_state(site) == before
    assert sorted(os.listdir(site / "blobs" / "sha256")) == blobs_before
    assert ref not in names(site) and other_ref in names(site)


def test_inventories_of_a_layout_and_a_registry_repository(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(30_000, 30)])
    repo = f"inv{uuid.uuid4().hex[:8]}/app"
    ref = push(image.layout, image.tag, registry, f"{repo}:1")
    expected = {image.manifest_digest, image.config_digest, *(layer.digest for layer in image.layers)}
    mark = registry.mark()
    listed = json.loads(cli(tmp_path / "c", "inventory", f"docker://{registry.host}/{repo}").stdout)
    assert set(listed["blobs"]) == expected
    assert len(registry.requests(mark)) == 2  # the tags list, one manifest
    layout = json.loads(cli(tmp_path / "c", "inventory", f"oci:{image.layout}").stdout)
    assert set(layout["blobs"]) == expected
    cli(tmp_path / "c", "pull", ref)
    cached = json.loads(cli(tmp_path / "c", "inventory").stdout)
    assert expected <= set(cached["blobs"])
    line = one_line_error(cli(tmp_path / "c", "inventory", f"docker://{registry.host}/{repo}:1", check=False))
    assert "name a repository" in line


@pytest.mark.parametrize("content, words", [
    (b"{not json", "is not valid JSON"),
    (b'{"lockVersion": 1, "images": []}', "'images' must be an object"),
    (b'{"lockVersion": 1, "images": {"x.io/a:1": {"digest": "sha256:../../etc", "mediaType": "m"}}}',
     "invalid digest"),
    (b'{"lockVersion": 1, "images": {"Not A Ref": {}}}', "invalid image reference"),
    (b'{"lockVersion": 2, "images": {}}', "not a layerhoard lock file"),
])
def test_malformed_lock_files_are_one_line_errors(tmp_path: Path, content: bytes, words: str) -> None:
    lock = tmp_path / "bad.lock"
    lock.write_bytes(content)
    with pytest.raises(DeliveryError, match=re.escape(words)):
        read_lock(lock)
    assert words in one_line_error(cli(tmp_path / "c", "warm", "--locked", str(lock), check=False))
    assert words in one_line_error(cli(tmp_path / "c", "export", "--locked", str(lock), "-", check=False))


def test_a_bundle_with_a_damaged_blob_is_refused_and_nothing_is_named(registry: Registry, tmp_path: Path) -> None:
    _, source, lock, _ = lock_and_bundle(registry, tmp_path, 40)
    bundle = tmp_path / "bundle"
    cli(source, "export", "--locked", str(lock), f"oci:{bundle}")
    layers = sorted((bundle / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = layers[-1]
    data = bytearray(biggest.read_bytes())
    data[-100] ^= 0xFF
    biggest.unlink()
    biggest.write_bytes(bytes(data))  # same size, one byte flipped
    site = tmp_path / "site"
    line = one_line_error(cli(site, "import", f"oci:{bundle}", check=False))
    assert biggest.name in line
    assert names(site) == {}


def evil_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                              ("index.json", b'{"schemaVersion":2,"manifests":[]}')):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("name, kind", [
    ("../outside", tarfile.REGTYPE),
    ("/etc/passwd", tarfile.REGTYPE),
    ("blobs/sha256/../../index.json", tarfile.REGTYPE),
    ("blobs/sha256/" + "a" * 64, tarfile.SYMTYPE),
    ("index.json", tarfile.REGTYPE),  # a second index.json
])
def test_path_tricks_in_a_bundle_tar_are_refused(tmp_path: Path, name: str, kind: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
    bundle = tmp_path / "evil.tar"
    evil_tar(bundle, member, b"x" if kind == tarfile.REGTYPE else b"")
    site = tmp_path / "site"
    line = one_line_error(cli(site, "import", f"oci-archive:{bundle}", check=False))
    assert "refusing the bundle" in line
    assert names(site) == {} and not any((site / "blobs" / "sha256").iterdir())


def test_a_multi_platform_image_with_a_referrer_is_locked_bundled_and_imported(
        registry: Registry, tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    amd = build_image(layout, [random_layer(30_000, 50)], platform=("linux", "amd64"), write_tag=False)
    arm = build_image(layout, [random_layer(30_000, 51)], platform=("linux", "arm64"), write_tag=False)
    index_digest, index = build_index(layout, [amd, arm], [("linux", "amd64"), ("linux", "arm64")], "m")
    ref = push(layout, "m", registry, f"multi{uuid.uuid4().hex[:8]}/app:1", all_platforms=True)
    source = tmp_path / "source"
    cli(source, "pull", "--all-platforms", ref)
    # a signature pushed beside the image (as serve records a push with a subject): its edge in the graph
    store = BlobStore(source)
    payload = b'{"critical": {}}'
    config = b"{}"
    signature = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config), "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sig", "digest": sha256(payload), "size": len(payload)}],
        "subject": {"mediaType": OCI_INDEX, "digest": index_digest, "size": len(index)},
    }).encode()
    # and a cosign signature of the amd64 manifest, which only cosign's tag ties to it (a cosign edge)
    cosign_config = json.dumps({"architecture": "", "os": "", "config": {},
                                "rootfs": {"type": "layers", "diff_ids": [sha256(payload)]}}).encode()
    cosigned = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(cosign_config),
                   "size": len(cosign_config)},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": sha256(payload),
                    "size": len(payload), "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}],
    }).encode()
    for blob in (config, payload, signature, cosign_config, cosigned):
        store.put_bytes(blob)
    link_referrer(store, parse_digest(index_digest), parse_digest(sha256(signature)), "application/vnd.example.sig")
    link_cosign(store, parse_digest(amd.manifest_digest), parse_digest(sha256(cosigned)), "sig")
    store.close()

    lock = tmp_path / "multi.lock"
    cli(source, "warm", ref, "--all-platforms", "--lock", str(lock))
    locked = read_lock(lock).images[ref]
    assert locked.digest == index_digest
    assert locked.platforms == {"linux/amd64": amd.manifest_digest, "linux/arm64": arm.manifest_digest}
    assert {d: note.via for d, note in locked.referrers.items()} == {sha256(signature): "referrer",
                                                                    sha256(cosigned): "cosign:sig"}
    assert lock.read_text() == read_lock(lock).encode().decode()  # stable: read and written the same

    mark = registry.mark()
    rebuilt = cli(tmp_path / "rebuild", "warm", "--locked", str(lock), check=False)
    assert not [r for r in registry.requests(mark) if r.path.endswith("/manifests/1")]
    assert names(tmp_path / "rebuild") == {ref: index_digest}  # both platforms, by digest
    # the signatures live only in the source cache: the locked build says so, naming the image
    assert rebuilt.returncode == 1 and f"failed: {ref}: a locked referrer cannot be had" in rebuilt.stdout

    bundle = tmp_path / "multi.tar"
    with open(bundle, "wb") as out:  # to stdout, as `export ... - | ssh site layerhoard import` would
        done = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(source), "export", "--locked",
                               str(lock), "-"], stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0 and "bundled 1 images" in done.stderr, done.stderr
    raw = skopeo("inspect", "--raw", f"oci-archive:{bundle}:{ref}").stdout
    assert sha256(raw.encode()) == index_digest
    site = tmp_path / "site"
    report = json.loads(cli(site, "--json", "import", f"oci-archive:{bundle}").stdout)
    assert report["images"] == {ref: index_digest} and report["referrers"] == 2
    assert names(site) == {ref: index_digest}
    site_store = BlobStore(site)
    try:
        assert referrers(site_store, parse_digest(index_digest)) == {sha256(signature): "application/vnd.example.sig"}
        assert cosign_tags(site_store, parse_digest(amd.manifest_digest)) == {sha256(cosigned): "sig"}
    finally:
        site_store.close()
    assert reachable(site) == reachable(source)


@pytest.mark.parametrize("index, words", [
    (b'{"schemaVersion":2,"manifests":[{"mediaType":"m","size":1,"digest":"sha256:../../../etc/passwd"}]}',
     "invalid digest"),
    (b'{"schemaVersion":2,"manifests":[{"mediaType":"m","size":-1,"digest":"sha256:' + b"a" * 64 + b'"}]}',
     "no valid size"),
    (b"[not json", "is not valid JSON"),
    (b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":2,'
     b'"digest":"sha256:' + b"a" * 64 + b'","annotations":{"org.opencontainers.image.ref.name":"1.0"}}]}',
     "not a full reference"),
])
def test_a_bundle_whose_index_is_bad_is_refused(tmp_path: Path, index: bytes, words: str) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "blobs" / "sha256").mkdir(parents=True)
    (bundle / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (bundle / "index.json").write_bytes(index)
    site = tmp_path / "site"
    assert words in one_line_error(cli(site, "import", f"oci:{bundle}", check=False))
    assert names(site) == {}


@pytest.mark.parametrize("content, words", [
    (b'{"inventoryVersion": 1, "blobs": {"sha256:abc": 3}}', "invalid digest"),
    (b'{"inventoryVersion": 1, "blobs": {"sha256:' + b"a" * 64 + b'": "big"}}', "has no valid size"),
    (b'{"blobs": {}}', "not a layerhoard inventory"),
])
def test_a_bad_inventory_is_a_one_line_error(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "inventory.json").write_bytes(content)
    (tmp_path / "empty.lock").write_text('{"images": {}, "lockVersion": 1}')
    result = cli(tmp_path / "c", "export", "--locked", str(tmp_path / "empty.lock"), "--exclude-from",
                 str(tmp_path / "inventory.json"), f"oci:{tmp_path / 'out'}", check=False)
    assert words in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_a_locked_referrer_is_fetched_by_its_digest(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(20_000, 60)])
    repo = f"signed{uuid.uuid4().hex[:8]}/app"
    ref = push(image.layout, image.tag, registry, f"{repo}:1")
    payload, config = b'{"spdxVersion": "SPDX-2.3"}', b"{}"
    sbom = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config), "size": 2},
        "layers": [{"mediaType": SBOM_TYPE, "digest": sha256(payload), "size": len(payload)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest)},
    }).encode()
    for blob in (payload, config):
        push_blob(registry.url, repo, blob)
    put_manifest(registry.url, repo, sha256(sbom), sbom)  # pushed by digest: no tag names it
    source = tmp_path / "source"
    cli(source, "pull", ref)
    store = BlobStore(source)  # the source cache holds it, as a pull that found it (issue 18) leaves it
    for blob in (payload, config, sbom):
        store.put_bytes(blob)
    link_referrer(store, parse_digest(image.manifest_digest), parse_digest(sha256(sbom)), SBOM_TYPE)
    store.close()
    lock = tmp_path / "app.lock"
    cli(source, "warm", ref, "--lock", str(lock))
    assert list(read_lock(lock).images[ref].referrers) == [sha256(sbom)]

    rebuild = tmp_path / "rebuild"
    mark = registry.mark()
    cli(rebuild, "warm", "--locked", str(lock))
    manifests = [r.path for r in registry.requests(mark) if "/manifests/" in r.path]
    assert sorted(manifests) == sorted([f"/v2/{repo}/manifests/{image.manifest_digest}",
                                        f"/v2/{repo}/manifests/{sha256(sbom)}"])  # by digest only
    rebuilt = BlobStore(rebuild)
    try:
        assert referrers(rebuilt, parse_digest(image.manifest_digest)) == {sha256(sbom): SBOM_TYPE}
        assert rebuilt.read_bytes(parse_digest(sha256(payload))) == payload
    finally:
        rebuilt.close()
    mark = registry.mark()
    cli(rebuild, "warm", "--locked", str(lock))
    assert registry.requests(mark) == []


def test_buildx_attestations_under_unknown_platforms_are_not_locked(registry: Registry, tmp_path: Path) -> None:
    layout = tmp_path / "buildx"
    image = build_image(layout, [random_layer(20_000, 70)], write_tag=False)
    attest = [build_image(layout, [random_layer(2_000, seed)], platform=("unknown", "unknown"), write_tag=False)
              for seed in (71, 72)]  # one attestation manifest per platform, as buildx writes them
    index_digest, _ = build_index(layout, [image, *attest], [("linux", "amd64"), ("unknown", "unknown"),
                                                              ("unknown", "unknown")], "b")
    ref = push(layout, "b", registry, f"buildx{uuid.uuid4().hex[:8]}/app:1", all_platforms=True)
    source = tmp_path / "source"
    cli(source, "warm", "--all-platforms", ref, "--lock", str(tmp_path / "b.lock"))
    locked = read_lock(tmp_path / "b.lock").images[ref]
    assert locked.digest == index_digest and locked.platforms == {"linux/amd64": image.manifest_digest}
    cli(tmp_path / "rebuild", "warm", "--locked", str(tmp_path / "b.lock"))
    assert names(tmp_path / "rebuild") == {ref: index_digest}
    cli(source, "export", "--locked", str(tmp_path / "b.lock"), f"oci:{tmp_path / 'bundle'}")
    cli(tmp_path / "site", "import", f"oci:{tmp_path / 'bundle'}")
    assert names(tmp_path / "site") == {ref: index_digest}
