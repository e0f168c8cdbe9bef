"""Registry faults a real registry will not produce, from a small misbehaving server on loopback.

Each ends in success or in a clear error, and nothing unverified is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.errors import DigestMismatch, InvalidManifest, LayerhoardError
from cache.ingest.pull import pull
from cache.ingest.report import PullReport
from cache.model.digest import parse_digest
from cache.model.refs import ImageRef
from cache.registry.client import RegistryClient, RetryPolicy
from cache.sources.registry import pull_from_registry
from cache.store.blobstore import BlobStore
from tests.faultserver import FaultRegistry
from tests.images import OCI_MANIFEST, TestImage, build_image, random_layer, sha256

REPO = "fault/app"


def blobs_of_layout(image: TestImage) -> dict[str, bytes]:
    folder = image.layout / "blobs" / "sha256"
    return {f"sha256:{path.name}": path.read_bytes() for path in folder.iterdir()}


@pytest.fixture
def image(tmp_path: Path) -> TestImage:
    return build_image(tmp_path / "layout", [random_layer(300_000, 1), random_layer(200_000, 2, compressible=True)])


@pytest.fixture
def server(image: TestImage) -> Iterator[FaultRegistry]:
    manifests = {"1": (image.manifest, OCI_MANIFEST), image.manifest_digest: (image.manifest, OCI_MANIFEST)}
    with FaultRegistry(REPO, manifests, blobs_of_layout(image)).running() as registry:
        yield registry


def fast_pull(store: BlobStore, server: FaultRegistry, reference: str = "1") -> PullReport:
    """Pull with short retry waits so fault tests stay quick."""
    separator = "@" if reference.startswith("sha256:") else ":"
    ref = ImageRef.parse(f"{server.host}/{REPO}{separator}{reference}")
    client = RegistryClient(ref.registry, retry=RetryPolicy(attempts=4, backoff=0.05))
    return pull_from_registry(store, ref, client=client)


def assert_nothing_stored(store: BlobStore) -> None:
    assert list(store.digests()) == []
    assert store.images() == []
    assert [p.name for p in store.ingest_dir.iterdir()] == []


def test_wrong_bytes_for_a_digest_are_rejected(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    server.faults.wrong_bytes.add(image.layers[0].digest)
    with pytest.raises(DigestMismatch, match=image.layers[0].digest):
        fast_pull(store, server)
    assert not store.has(parse_digest(image.layers[0].digest))
    assert store.images() == []
    assert not (store.ingest_dir / f"sha256-{image.layers[0].digest[7:]}").exists()


def test_cut_body_is_resumed_with_range(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    layer = image.layers[0]
    server.faults.cut_after[layer.digest] = 250_000
    report = fast_pull(store, server)
    assert report.digest == image.manifest_digest
    ranges = [s.headers.get("Range") for s in server.seen if s.path.endswith(layer.digest)]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(str(ranges[1]).removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 250_000  # only what was lost in the last read is asked for again
    assert store.has(parse_digest(layer.digest))


def test_cut_body_restarts_when_range_is_ignored(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    server.faults.cut_after[image.layers[0].digest] = 50_000
    server.faults.ignore_range = True
    report = fast_pull(store, server)
    assert report.layers[0].diff_id == image.layers[0].diff_id


def test_server_errors_then_success(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    server.faults.fail_first[image.layers[1].digest] = [500, 503]
    server.faults.fail_first["/manifests/1"] = [502]
    report = fast_pull(store, server)
    assert report.digest == image.manifest_digest
    assert sum(1 for s in server.seen if s.path.endswith(image.layers[1].digest)) == 3


def test_429_waits_for_retry_after(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    import time

    server.faults.fail_first[image.config_digest] = [429]
    server.faults.retry_after = "1"
    started = time.monotonic()
    fast_pull(store, server)
    assert time.monotonic() - started >= 1.0  # Retry-After honoured, not the 0.05 s backoff


def test_persistent_500_is_a_clear_error(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    server.faults.fail_first[image.layers[0].digest] = [500] * 10
    with pytest.raises(LayerhoardError, match=r"failed after 4 tries \(HTTP 500\)"):
        fast_pull(store, server)
    assert store.images() == []
    assert not store.has(parse_digest(image.layers[0].digest))


def test_manifest_digest_mismatch(store: BlobStore, server: FaultRegistry, image: TestImage) -> None:
    server.manifests[image.manifest_digest] = (image.manifest.replace(b'"schemaVersion": 2', b'"schemaVersion":2'),
                                               OCI_MANIFEST)
    with pytest.raises(DigestMismatch, match="not the sha256"):
        fast_pull(store, server, image.manifest_digest)
    assert_nothing_stored(store)


def test_config_diff_ids_that_do_not_match_layers(store: BlobStore, tmp_path: Path) -> None:
    image = build_image(tmp_path / "l2", [random_layer(10_000, 5)])
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] = [sha256(b"something else")]
    bad_config = json.dumps(config).encode()
    manifest = json.loads(image.manifest)
    manifest["config"].update(digest=sha256(bad_config), size=len(bad_config))
    raw = json.dumps(manifest).encode()
    blobs = {**blobs_of_layout(image), sha256(bad_config): bad_config}
    with FaultRegistry(REPO, {"1": (raw, OCI_MANIFEST)}, blobs).running() as server:
        with pytest.raises(DigestMismatch, match="but the config says"):
            fast_pull(store, server)
    assert not store.has(parse_digest(image.layers[0].digest))
    assert store.images() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"schemaVersion": 1}', "schemaVersion 1 is not supported"),
        (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "config": {}, "layers": []}',
         "descriptor has no mediaType"),
        (b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": [], "config": '
         b'{"mediaType": "x", "size": 2, "digest": "sha256:../../etc/passwd"}}', "invalid digest"),
        (b" " * (5 * 1024 * 1024) + b"{}", "larger than"),
    ],
    ids=["not-json", "schema-1", "empty-config", "path-in-digest", "huge"],
)
def test_malformed_or_huge_manifest(store: BlobStore, tmp_path: Path, body: bytes, message: str) -> None:
    with FaultRegistry(REPO, {"1": (body, OCI_MANIFEST)}, {}).running() as server:
        with pytest.raises((InvalidManifest, DigestMismatch), match=message):
            fast_pull(store, server)
    assert_nothing_stored(store)


def test_bearer_token_one_per_scope_and_redirect_without_auth(
    store: BlobStore, image: TestImage, tmp_path: Path
) -> None:
    manifests = {"1": (image.manifest, OCI_MANIFEST)}
    blobs = blobs_of_layout(image)
    with FaultRegistry(REPO, {}, blobs).running() as storage, \
            FaultRegistry(REPO, manifests, blobs).running() as server:
        server.faults.token_required = True
        server.faults.redirect_blobs_to = storage.url
        report = fast_pull(store, server)
    assert report.digest == image.manifest_digest
    assert server.tokens_issued == [f"repository:{REPO}:pull"]  # one token, reused for every request
    assert storage.seen and all("Authorization" not in s.headers for s in storage.seen)
    assert all(s.headers.get("Authorization") == "Bearer token-0" for s in server.seen[1:] if "/v2/" in s.path)


def test_unknown_tag_is_a_clear_error(store: BlobStore, server: FaultRegistry) -> None:
    with pytest.raises(LayerhoardError, match="not found in the registry"):
        pull(store, f"{server.host}/{REPO}:nope")
    assert_nothing_stored(store)
