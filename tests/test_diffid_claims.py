"""diff_id claims (cache/store/diffids.py): a layer pulled now, its diff_id checked later, and never
trusted before. Images are made with plain tarfile/gzip/json (tests/images.py), pushed with skopeo
into a real docker-registry; the daemon's debug log and skopeo are the witnesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cache.errors import DigestMismatch
from cache.ingest.pull import PullOptions, pull
from cache.ingest.report import PullReport
from cache.model.digest import parse_digest
from cache.model.manifests import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from cache.model.refs import DaemonSource
from cache.sources.daemon import NO_STORAGE_READS, pull_from_daemon
from cache.store.blobstore import BlobStore
from cache.store.diffids import claim_lock
from cache.store.images import load_image
from tests.images import (
    OCI_MANIFEST,
    LayoutWriter,
    TestImage,
    build_image,
    load_into_daemon,
    push,
    random_layer,
    sha256,
)
from tests.services import Daemon, Registry


def cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=300)


def cli_json(cache: Path, *args: str, code: int = 0) -> dict[str, object]:
    result = cli(cache, "--json", *args)
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def deferred_pull(store: BlobStore, ref: str) -> PullReport:
    """A pull as the command line makes it, without the check it starts afterwards."""
    store.defer_diff_ids = True
    try:
        report = pull(store, ref, PullOptions())
    finally:
        store.defer_diff_ids = False
    assert not any(layer.diff_id_verified for layer in report.layers)
    return report


def lying_image(layout: Path, tars: list[bytes], claimed: list[str]) -> TestImage:
    """An image whose config names ``claimed`` as its layers' diff_ids (true or not)."""
    image = build_image(layout, tars, tag="1", write_tag=False)
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] = claimed
    raw_config = json.dumps(config).encode()
    manifest = json.loads(image.manifest)
    writer = LayoutWriter(layout)
    manifest["config"].update(digest=writer.blob(raw_config), size=len(raw_config))
    raw = json.dumps(manifest).encode()
    writer.tag("1", OCI_MANIFEST, writer.blob(raw), len(raw))
    return image


def test_claims_are_shown_then_verified(registry: Registry, store: BlobStore, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(300_000, 61), random_layer(90_000, 62, compressible=True)],
                        tag="1")
    ref = push(image.layout, "1", registry, "claims/shown:1")
    deferred_pull(store, ref)
    layers = [parse_digest(layer.digest) for layer in image.layers]
    assert set(store.index.pending_diff_ids()) == set(layers)
    assert all(store.index.diff_id_of(layer) is None for layer in layers)  # no pair before the check
    cached = deferred_pull(store, ref)  # says what the layers claim, and that it is not verified yet
    assert cached.bytes_reused and [layer.diff_id for layer in cached.layers] == image.diff_ids
    listed = cli_json(store.root, "ls")["images"]
    assert [(row["diff_ids_unverified"], row["diff_ids_mismatched"]) for row in listed] == [(2, 0)]  # type: ignore[index]
    usage = cli_json(store.root, "du")
    assert (usage["diff_ids_unverified"], usage["diff_ids_mismatched"]) == (2, 0)
    assert "2 layers' diff_ids not yet verified" in cli(store.root, "du").stdout

    verified = cli_json(store.root, "verify", "--diff-ids")["diff_ids"]
    assert verified == {"checked": 2, "verified": 2, "refuted": [], "pending": 0}
    assert [str(store.index.diff_id_of(layer)) for layer in layers] == image.diff_ids
    assert cli_json(store.root, "du")["diff_ids_unverified"] == 0
    assert "not yet verified" not in cli(store.root, "ls").stdout
    store.defer_diff_ids = True
    assert all(layer.diff_id_verified for layer in pull(store, ref, PullOptions()).layers)


def test_cli_pull_checks_its_claims_in_the_background(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(500_000, 63)], tag="1")
    ref = push(image.layout, "1", registry, "claims/background:1")
    cache = tmp_path / "cache"
    report = cli_json(cache, "pull", ref)
    assert [layer["diff_id"] for layer in report["layers"]] == image.diff_ids  # type: ignore[index]
    assert [layer["diff_id_verified"] for layer in report["layers"]] == [False]  # type: ignore[index]
    # verify --diff-ids waits for the check the pull left running (it holds a lock from its start),
    # which settled the claim: nothing is left for this one to check
    assert cli_json(cache, "verify", "--diff-ids")["diff_ids"] == {"checked": 0, "verified": 0, "refuted": [],
                                                                  "pending": 0}
    store = BlobStore(cache)
    assert str(store.index.diff_id_of(parse_digest(image.layers[0].digest))) == image.diff_ids[0]
    again = cli_json(cache, "pull", ref)  # cached: nothing left to check
    assert [(layer["reused"], layer["diff_id"]) for layer in again["layers"]] == [(True, image.diff_ids[0])]  # type: ignore[index]


def test_a_check_that_dies_leaves_its_claims_to_the_next(registry: Registry, store: BlobStore, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(200_000, 71)], tag="1")
    deferred_pull(store, push(image.layout, "1", registry, "claims/died:1"))
    layer = parse_digest(image.layers[0].digest)
    with claim_lock(store, layer):  # a background check is hashing it
        busy = cli_json(store.root, "verify", "--diff-ids", "--background")["diff_ids"]  # what pull starts
        assert busy == {"checked": 0, "verified": 0, "refuted": [], "pending": 1}
    # that check was killed (its lock went with it): the claim is still pending, and still shown
    assert cli_json(store.root, "du")["diff_ids_unverified"] == 1 and store.index.diff_id_of(layer) is None
    assert cli_json(store.root, "verify", "--diff-ids")["diff_ids"]["verified"] == 1
    assert str(store.index.diff_id_of(layer)) == image.diff_ids[0]


def test_refuted_claim_is_never_recorded_and_verify_reports_it(
    registry: Registry, store: BlobStore, tmp_path: Path
) -> None:
    tars = [random_layer(200_000, 64), random_layer(50_000, 65, compressible=True)]
    claimed = [sha256(tars[0]), sha256(b"not what the second layer holds")]
    image = lying_image(tmp_path / "img", tars, claimed)
    ref = push(image.layout, "1", registry, "claims/lying:1")
    deferred_pull(store, ref)
    bad = parse_digest(image.layers[1].digest)

    with pytest.raises(DigestMismatch, match="but the config says"):
        load_image(store, ref).require_image("an SBOM")  # what sbom and docker exports ask first
    assert store.index.diff_id_of(bad) is None
    good = parse_digest(image.layers[0].digest)
    assert str(store.index.diff_id_of(good)) == claimed[0]
    result = cli(store.root, "sbom", ref)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "but the config says" in result.stderr
    report = cli_json(store.root, "verify", code=1)
    assert report["diff_ids"]["refuted"] == [  # type: ignore[index]
        {"blob": str(bad), "diff_id": claimed[1], "found": f"uncompresses to {sha256(tars[1])}"}]
    assert cli_json(store.root, "ls")["images"][0]["diff_ids_mismatched"] == 1  # type: ignore[index]
    assert store.index.diff_id_of(bad) is None and store.index.blobs_for_diff_id(parse_digest(claimed[1])) == {}
    store.close()
    cli_json(store.root, "gc", "--rebuild-index")  # a rebuilt index hashes every layer: still refuted
    assert cli_json(store.root, "verify", code=1)["diff_ids"]["refuted"] == report["diff_ids"]["refuted"]  # type: ignore[index]
    rebuilt = BlobStore(store.root)
    assert rebuilt.index.diff_id_of(bad) is None and str(rebuilt.index.diff_id_of(good)) == claimed[0]
    rebuilt.close()


def test_two_claims_on_one_layer_are_checked_at_once(registry: Registry, store: BlobStore, tmp_path: Path) -> None:
    """A second image names another diff_id for a layer whose claim is pending: one of them is
    false, so the pull checks now (and fails, as a pull that checks while it streams does)."""
    tar = random_layer(150_000, 72)
    honest = build_image(tmp_path / "honest", [tar], tag="1")
    deferred_pull(store, push(honest.layout, "1", registry, "claims/honest:1"))
    lying = lying_image(tmp_path / "lying", [tar], [sha256(b"another layer")])
    assert lying.layers[0].digest == honest.layers[0].digest
    store.defer_diff_ids = True
    with pytest.raises(DigestMismatch, match="but the config says"):
        pull(store, push(lying.layout, "1", registry, "claims/two:1"), PullOptions())
    layer = parse_digest(honest.layers[0].digest)
    assert str(store.index.diff_id_of(layer)) == honest.diff_ids[0]  # the same hashing settled the honest claim
    assert store.index.pending_diff_ids() == {}
    assert store.index.refuted_diff_id(layer, parse_digest(sha256(b"another layer"))) is not None


@pytest.mark.daemon
def test_daemon_pull_over_an_unverified_base(
    monkeypatch: pytest.MonkeyPatch, dockerd: Daemon, registry: Registry, store: BlobStore, tmp_path: Path
) -> None:
    """The base's pairs are claims when the daemon pull needs them: checked first, then reused."""
    monkeypatch.setenv(NO_STORAGE_READS, "1")  # the save route: what it reads is in the daemon's log
    base_layers = [random_layer(600_000, 66), random_layer(80_000, 67, compressible=True)]
    base = build_image(tmp_path / "base", base_layers, tag="1")
    deferred_pull(store, push(base.layout, "1", registry, "claims/base:1"))
    app = build_image(tmp_path / "app", [*base_layers, random_layer(100_000, 68)], tag="1")
    load_into_daemon(app.layout, "1", dockerd, "lh/claims-app:1")

    report = pull_from_daemon(store, DaemonSource("lh/claims-app:1"), docker_host=dockerd.host)
    assert [layer.digest for layer in report.layers[:2]] == [layer.digest for layer in base.layers]
    assert [layer.reused for layer in report.layers] == [True, True, False]
    assert [str(store.index.diff_id_of(parse_digest(layer.digest))) for layer in base.layers] == base.diff_ids
    assert store.index.pending_diff_ids() == {}


@pytest.mark.daemon
def test_daemon_pull_never_trusts_a_false_claim(
    monkeypatch: pytest.MonkeyPatch, dockerd: Daemon, registry: Registry, store: BlobStore, tmp_path: Path
) -> None:
    """A registry image claims its layer is the daemon image's layer; it is not, so the daemon's
    own bytes are stored, and the registry's blob never stands in for them."""
    monkeypatch.setenv(NO_STORAGE_READS, "1")
    real, other = random_layer(300_000, 69), random_layer(300_000, 70)
    lying = lying_image(tmp_path / "lying", [other], [sha256(real)])
    deferred_pull(store, push(lying.layout, "1", registry, "claims/impostor:1"))
    app = build_image(tmp_path / "app", [real], tag="1")
    load_into_daemon(app.layout, "1", dockerd, "lh/claims-real:1")

    report = pull_from_daemon(store, DaemonSource("lh/claims-real:1"), docker_host=dockerd.host)
    layer = report.layers[0]
    assert layer.diff_id == sha256(real) and layer.digest != lying.layers[0].digest
    assert not layer.reused and layer.media_type == OCI_LAYER_ZSTD
    assert store.index.blobs_for_diff_id(parse_digest(sha256(real))) == {parse_digest(layer.digest): OCI_LAYER_ZSTD}
    impostor = parse_digest(lying.layers[0].digest)
    assert store.index.refuted_diff_id(impostor, parse_digest(sha256(real))) == f"uncompresses to {sha256(other)}"
    assert store.index.pending_diff_ids() == {}
    assert OCI_LAYER_GZIP not in store.index.blobs_for_diff_id(parse_digest(sha256(real))).values()
