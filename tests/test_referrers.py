"""Signatures, SBOMs and attestations travel with their images (issue 18).

Referrers are made by real clients (tests/referrer_makers.py: oras, the tag schema a client keeps,
cosign's format); docker-registry 2.8 has no referrers API, so a pull from it goes through the tag
schema, and layerhoard serve (an OCI 1.1 registry) is where the referrers API is exercised.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oras.client
import pytest
import requests
from click.testing import CliRunner

import cache.ingest.referrers as referrers_module
from cache.errors import DigestMismatch, InvalidManifest
from cache.formats.index_json import REF_NAME
from cache.ingest.pull import PullOptions, ReferrerOptions, pull
from cache.model.digest import parse_digest
from cache.sbom import SbomRecords
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.graph import ContentGraph
from cache.store.images import load_image
from cache.upkeep.gc import gc
from cache.upkeep.prune import PrunePolicy, prune
from cache.upkeep.rebuild_index import rebuild_index
from cli.main import main
from tests.images import build_image, push, random_layer, sha256
from tests.referrer_makers import (
    OCI_INDEX,
    OCI_MANIFEST,
    SBOM_TYPE,
    SIMPLESIGNING,
    Made,
    cosign_sign,
    oras_attach,
    push_blob,
    put_manifest,
    write_tag_schema,
)
from tests.services import Registry, start_registry
from tests.test_serve import start

pytestmark = pytest.mark.registry


class Signed:
    """An image in the registry with an SBOM (oras, tag schema), a cosign signature, and a cosign
    signature of the SBOM (a referrer of a referrer)."""

    def __init__(self, registry: Registry, folder: Path, repo: str, seed: int = 3) -> None:
        image = build_image(folder / "src", [random_layer(4000, seed), random_layer(90_000, seed + 1, True)], tag="t")
        self.ref = push(folder / "src", "t", registry, f"{repo}:1")
        self.repo = repo
        self.digest = image.manifest_digest
        self.sbom = oras_attach(registry.host, repo, self.digest, len(image.manifest), folder / "oras")
        write_tag_schema(registry.url, repo, self.digest, [self.sbom])
        self.signature = cosign_sign(registry.url, repo, self.digest, f"{registry.host}/{repo}")
        self.sbom_signature = cosign_sign(registry.url, repo, self.sbom.digest, f"{registry.host}/{repo}")

    @property
    def made(self) -> list[Made]:
        return [self.sbom, self.signature, self.sbom_signature]


@pytest.fixture
def signed(registry: Registry, tmp_path: Path) -> Signed:
    return Signed(registry, tmp_path, f"signed/app{tmp_path.name[-8:].replace('_', '')}")


def assert_kept_byte_for_byte(store: BlobStore, made: list[Made]) -> None:
    for referrer in made:
        assert store.read_bytes(parse_digest(referrer.digest)) == referrer.manifest
        for digest, data in referrer.blobs.items():
            assert store.read_bytes(parse_digest(digest)) == data


def test_a_pull_keeps_every_referrer_byte_for_byte_through_the_tag_schema_and_cosign_tags(
        store: BlobStore, registry: Registry, signed: Signed) -> None:
    reports = pull(store, signed.ref).referrers
    assert {(r.digest, r.via, r.subject) for r in reports} == {
        (signed.sbom.digest, "tag-schema", signed.digest),
        (signed.signature.digest, "cosign:sig", signed.digest),
        (signed.sbom_signature.digest, "cosign:sig", signed.sbom.digest),  # one level deeper
    }
    assert not any(r.reused for r in reports)
    assert_kept_byte_for_byte(store, signed.made)


def test_a_cached_pull_costs_what_it_did_and_refresh_referrers_picks_up_a_new_signature(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path) -> None:
    pull(store, signed.ref)
    mark = registry.mark()
    assert pull(store, signed.ref).referrers == []
    assert [(r.method, r.path) for r in registry.requests(mark)] == [
        ("GET", f"/v2/{signed.repo}/manifests/1")]  # the one manifest request of a cached pull, as before

    attestation = cosign_sign(registry.url, signed.repo, signed.digest, signed.ref, suffix="att")
    assert pull(store, signed.ref).referrers == []  # not asked: the image is cached
    assert not store.has(parse_digest(attestation.digest))
    mark = registry.mark()
    result = CliRunner().invoke(main, ["--cache-dir", str(store.root), "--json", "pull", signed.ref,
                                       "--refresh-referrers"])
    assert result.exit_code == 0, result.output
    refreshed = json.loads(result.stdout)["referrers"]
    assert {(r["digest"], r["via"], r["reused"]) for r in refreshed} == {
        (signed.sbom.digest, "tag-schema", True), (signed.signature.digest, "cosign:sig", True),
        (signed.sbom_signature.digest, "cosign:sig", True), (attestation.digest, "cosign:att", False)}
    assert {r.path.rsplit("/", 1)[-1] for r in registry.blob_requests(mark)} == set(attestation.blobs)
    assert_kept_byte_for_byte(store, [attestation])

    bare = BlobStore(tmp_path / "bare")  # --no-referrers: not one request about them
    mark = registry.mark()
    assert pull(bare, signed.ref, PullOptions(referrers=ReferrerOptions(enabled=False))).referrers == []
    assert not any("sha256-" in r.path or "/referrers/" in r.path for r in registry.requests(mark))


def test_an_unsigned_image_costs_five_requests_more_the_first_time(
        store: BlobStore, registry: Registry, tmp_path: Path) -> None:
    build_image(tmp_path / "plain", [random_layer(3000, 21)], tag="t")
    ref = push(tmp_path / "plain", "t", registry, f"plain/app{tmp_path.name[-8:].replace('_', '')}:1")
    asked = []
    for cache, referrers in (("without", ReferrerOptions(enabled=False)), ("with", ReferrerOptions())):
        mark = registry.mark()
        report = pull(BlobStore(tmp_path / cache), ref, PullOptions(referrers=referrers))
        asked.append([(r.method, r.path.rsplit("/", 1)[-1]) for r in registry.requests(mark)])
        assert report.requests == len(asked[-1]) and report.referrers == []
    digest = parse_digest(pull(store, ref).digest)
    assert asked[1][len(asked[0]):] == [("GET", str(digest)), ("HEAD", f"sha256-{digest.hex}"),
                                        *(("HEAD", f"sha256-{digest.hex}.{s}") for s in ("sig", "att", "sbom"))]


def test_referrers_type_keeps_only_the_asked_artifacts(store: BlobStore, registry: Registry, signed: Signed) -> None:
    sboms = pull(store, signed.ref, PullOptions(referrers=ReferrerOptions(types=(SBOM_TYPE,)))).referrers
    assert [r.digest for r in sboms] == [signed.sbom.digest]
    assert not store.has(parse_digest(signed.signature.digest))
    asked = PullOptions(referrers=ReferrerOptions(types=(SIMPLESIGNING,), refresh=True))
    signatures = pull(store, signed.ref, asked).referrers
    assert [r.digest for r in signatures] == [signed.signature.digest]  # the SBOM's is reached through it


@contextlib.contextmanager
def tampered(registry: Registry, digest: str) -> Iterator[None]:
    """Change one byte of what docker-registry stores under ``digest`` (it serves stored bytes
    unchecked); a manifest stays valid JSON (its file name annotation changes), or distribution
    would refuse to serve it."""
    path = registry.workdir / "storage/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    original = path.read_bytes()
    changed = original.replace(b"sbom.json", b"sbom.jsom")
    path.write_bytes(changed if changed != original else bytes([original[0] ^ 1]) + original[1:])
    try:
        yield
    finally:
        path.write_bytes(original)


def test_a_referrer_whose_bytes_do_not_match_its_digest_is_refused_and_nothing_is_stored(
        store: BlobStore, registry: Registry, signed: Signed) -> None:
    payload = next(digest for digest, data in signed.sbom.blobs.items() if data != b"{}")
    for digest in (payload, signed.sbom.digest):  # the SBOM's document, then its manifest
        with tampered(registry, digest), pytest.raises(DigestMismatch):
            pull(store, signed.ref, PullOptions(referrers=ReferrerOptions(refresh=True)))
        assert not store.has(parse_digest(signed.sbom.digest)) and not store.has(parse_digest(payload))
        assert ContentGraph.load(store).referrers.get(signed.digest) is None


def test_a_bad_referrer_fails_the_pull_before_the_image_is_named_and_the_next_pull_asks_again(
        store: BlobStore, registry: Registry, signed: Signed) -> None:
    with tampered(registry, signed.sbom.digest), pytest.raises(DigestMismatch):
        pull(store, signed.ref)  # a first pull: no --refresh-referrers needed
    assert store.index_entries() == []  # nothing named: the image is not half there
    report = pull(store, signed.ref)  # asked again, without any flag
    assert signed.sbom.digest in {r.digest for r in report.referrers}
    assert store.has(parse_digest(signed.sbom.digest)) and len(store.index_entries()) == 1


def test_gc_keeps_a_referrer_with_its_subject_and_drops_it_with_its_subject(
        store: BlobStore, registry: Registry, signed: Signed) -> None:
    pull(store, signed.ref)
    every = [parse_digest(d) for made in signed.made for d in [made.digest, *made.blobs]]
    gc(store, grace=0)
    assert all(store.has(digest) for digest in every)
    rebuild_index(store)  # referrers found again from their subject, cosign's edges from the old index
    assert ContentGraph.load(store).cosign == {signed.digest: {signed.signature.digest: "sig"},
                                               signed.sbom.digest: {signed.sbom_signature.digest: "sig"}}
    gc(store, grace=0)
    assert all(store.has(digest) for digest in every)
    store.remove_image(signed.ref)
    gc(store, grace=0)
    assert not any(store.has(digest) for digest in every)


def test_prune_keeps_referrers_with_a_kept_subject_and_evicts_them_with_an_evicted_one(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path) -> None:
    other = Signed(registry, tmp_path / "other", f"{signed.repo}-other", seed=5)
    for image in (signed, other):
        pull(store, image.ref)
    blobs = {image.ref: [parse_digest(d) for made in image.made for d in [made.digest, *made.blobs]]
             for image in (signed, other)}
    plan = prune(store, PrunePolicy(evict_all=True, keep=frozenset({other.ref}), grace=0))
    assert plan is not None and [image["ref"] for image in plan.images] == [signed.ref]
    assert all(store.has(digest) for digest in blobs[other.ref])
    assert not any(store.has(digest) for digest in blobs[signed.ref] if digest not in blobs[other.ref])


def test_serve_answers_the_referrers_api_and_the_tag_schema_and_a_pull_from_it_uses_the_api(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path) -> None:
    pull(store, signed.ref)
    with start(store, default_registry=registry.host) as server:
        base = f"http://{server.host}/v2/{signed.repo}"
        listed = requests.get(f"{base}/referrers/{signed.digest}", timeout=10).json()
        assert [m["digest"] for m in listed["manifests"]] == [signed.sbom.digest]  # cosign's are tags, not referrers
        assert listed["manifests"][0]["artifactType"] == SBOM_TYPE
        tag_schema = requests.get(f"{base}/manifests/sha256-{signed.digest[7:]}", timeout=10)
        assert tag_schema.headers["Content-Type"] == OCI_INDEX
        assert tag_schema.json()["manifests"] == listed["manifests"]
        oras_client = oras.client.OrasClient(hostname=server.host, insecure=True)
        files = oras_client.pull(target=f"{server.host}/{signed.repo}@{signed.sbom.digest}",
                                 outdir=str(tmp_path / "oras-back"))
        assert [Path(f).read_bytes() for f in files] == [signed.sbom.document]
        for subject, made in ((signed.digest, signed.signature), (signed.sbom.digest, signed.sbom_signature)):
            sig = requests.get(f"{base}/manifests/sha256-{subject[7:]}.sig", timeout=10)
            assert sig.content == made.manifest  # as it was fetched

        second = BlobStore(tmp_path / "second")
        reports = pull(second, f"{server.host}/{signed.repo}:1").referrers
        assert {(r.digest, r.via) for r in reports} == {
            (signed.sbom.digest, "referrers-api"), (signed.signature.digest, "cosign:sig"),
            (signed.sbom_signature.digest, "cosign:sig")}
        assert_kept_byte_for_byte(second, signed.made)


def sbom_cli(cache: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--cache-dir", str(cache), "--json", "sbom", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_an_attached_sbom_travels_to_a_second_cache_which_returns_it_without_a_scan(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path) -> None:
    pull(store, signed.ref)
    attached = sbom_cli(store.root, signed.ref, "--attach", "-o", str(tmp_path / "first.json"))
    assert attached["scanned"] and attached["attached"]
    document = (tmp_path / "first.json").read_bytes()
    again = sbom_cli(store.root, signed.ref, "-o", str(tmp_path / "again.json"))  # no scan, no new artifact
    assert not again["scanned"] and again["attached"] == attached["attached"]
    assert (tmp_path / "again.json").read_bytes() == document
    rescanned = sbom_cli(store.root, signed.ref, "--rescan", "-o", str(tmp_path / "rescan.json"))
    assert rescanned["scanned"] and rescanned["attached"] is None

    with start(store, default_registry=registry.host) as server:
        listed = requests.get(f"http://{server.host}/v2/{signed.repo}/referrers/{signed.digest}",
                              params={"artifactType": "application/spdx+json"}, timeout=10).json()
        assert [m["digest"] for m in listed["manifests"]] == [attached["attached"]]
        second = BlobStore(tmp_path / "second")
        pull(second, f"{server.host}/{signed.repo}:1")
    ref = f"{server.host}/{signed.repo}:1"
    reused = sbom_cli(second.root, ref, "-o", str(tmp_path / "second.json"))
    assert not reused["scanned"] and reused["attached"] == attached["attached"]
    assert (tmp_path / "second.json").read_bytes() == document
    warmed = CliRunner().invoke(main, ["--cache-dir", str(second.root), "--json", "warm", ref, "--offline",
                                       "--sbom-dir", str(tmp_path / "sboms")])  # a packaging build's SBOM step
    assert warmed.exit_code == 0, warmed.output
    written = json.loads(warmed.stdout)["packaged"][0]["sbom"]
    assert written["attached"] == attached["attached"] and Path(written["path"]).read_bytes() == document
    records = SbomRecords(second.index)  # the witness: a scanned layer leaves its record
    assert all(records.get(str(diff_id)) is None for diff_id in load_image(second, ref).config.diff_ids)


def test_an_oci_export_pulled_into_a_fresh_cache_still_has_every_referrer(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path) -> None:
    pull(store, signed.ref)
    layout = tmp_path / "layout"
    export(store, load_image(store, signed.ref), f"oci:{layout}:app")
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    names = {entry["digest"]: entry.get("annotations", {}).get(REF_NAME) for entry in entries}
    assert names == {signed.digest: "app", signed.sbom.digest: None,  # a referrer: listed unnamed
                     signed.signature.digest: f"sha256-{signed.digest[7:]}.sig",  # cosign's: by its tag
                     signed.sbom_signature.digest: f"sha256-{signed.sbom.digest[7:]}.sig"}
    for made in signed.made:
        for digest, data in [(made.digest, made.manifest), *made.blobs.items()]:
            assert (layout / "blobs" / "sha256" / digest[7:]).read_bytes() == data

    fresh = BlobStore(tmp_path / "fresh")
    reports = pull(fresh, f"oci:{layout}").referrers  # the image is the one named entry
    assert {(r.digest, r.via) for r in reports} == {
        (signed.sbom.digest, "layout"), (signed.signature.digest, "cosign:sig"),
        (signed.sbom_signature.digest, "cosign:sig")}
    assert_kept_byte_for_byte(fresh, signed.made)
    with start(fresh) as server:  # and serve answers them from the fresh cache
        listed = requests.get(f"http://{server.host}/v2/x/referrers/{signed.digest}", timeout=10).json()
        assert [m["digest"] for m in listed["manifests"]] == [signed.sbom.digest]


def test_inspect_shows_what_travels_with_an_image(store: BlobStore, registry: Registry, signed: Signed) -> None:
    pull(store, signed.ref)
    result = CliRunner().invoke(main, ["--cache-dir", str(store.root), "--json", "inspect", signed.ref])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert {(row["digest"], row["via"], row["subject"]) for row in shown["attached"]} == {
        (signed.sbom.digest, "referrer", signed.digest), (signed.signature.digest, "cosign:sig", signed.digest),
        (signed.sbom_signature.digest, "cosign:sig", signed.sbom.digest)}
    sbom = next(row for row in shown["attached"] if row["digest"] == signed.sbom.digest)
    assert sbom["artifact_type"] == SBOM_TYPE
    assert sbom["size"] == len(signed.sbom.manifest) + sum(len(data) for data in signed.sbom.blobs.values())
    missing = CliRunner().invoke(main, ["--cache-dir", str(store.root), "inspect", "nothing:here"])
    assert missing.exit_code == 1 and "is not in the cache" in missing.output


@pytest.fixture(scope="module")
def second_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("second-registry"))


def test_push_cache_carries_them_to_a_second_registry_and_a_teammate_gets_them_from_there(
        store: BlobStore, registry: Registry, second_registry: Registry, signed: Signed, tmp_path: Path) -> None:
    pull(store, signed.ref)
    repo = f"cache{tmp_path.name[-8:].replace('_', '')}"
    result = CliRunner().invoke(main, ["--cache-dir", str(store.root), "--json", "push-cache", signed.ref,
                                       "--remote", f"{second_registry.host}/{repo}"])
    assert result.exit_code == 0, result.output
    base = f"{second_registry.url}/v2/{repo}"
    for made in signed.made:  # by digest on that registry, byte for byte
        assert requests.get(f"{base}/manifests/{made.digest}", timeout=10,
                            headers={"Accept": OCI_MANIFEST}).content == made.manifest
        for digest, data in made.blobs.items():
            assert requests.get(f"{base}/blobs/{digest}", timeout=10).content == data
    schema = requests.get(f"{base}/manifests/sha256-{signed.digest[7:]}", headers={"Accept": OCI_INDEX}, timeout=10)
    assert [m["digest"] for m in schema.json()["manifests"]] == [signed.sbom.digest]  # no referrers API there
    for subject, made in ((signed.digest, signed.signature), (signed.sbom.digest, signed.sbom_signature)):
        tagged = requests.get(f"{base}/manifests/sha256-{subject[7:]}.sig", headers={"Accept": OCI_MANIFEST},
                              timeout=10)
        assert tagged.content == made.manifest

    teammate = BlobStore(tmp_path / "teammate")  # resolves the image through the remote
    mark = registry.mark()
    result = CliRunner().invoke(main, ["--cache-dir", str(teammate.root), "--json", "pull", signed.ref,
                                       "--remote", f"{second_registry.host}/{repo}"])
    assert result.exit_code == 0, result.output
    assert registry.requests(mark) == []  # the origin is not asked: the remote holds the image and them
    assert {r["digest"] for r in json.loads(result.stdout)["referrers"]} == {made.digest for made in signed.made}
    assert_kept_byte_for_byte(teammate, signed.made)


def test_serve_lists_an_index_that_refers_too(store: BlobStore, registry: Registry, signed: Signed) -> None:
    pull(store, signed.ref)
    with start(store, default_registry=registry.host, allow_push=True) as server:
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.example.set",
                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": signed.sbom.digest,
                                           "size": len(signed.sbom.manifest)}],
                            "subject": {"mediaType": OCI_MANIFEST, "digest": signed.digest, "size": 1}}).encode()
        put_manifest(f"http://{server.host}", signed.repo, sha256(index), index, OCI_INDEX)
        listed = requests.get(f"http://{server.host}/v2/{signed.repo}/referrers/{signed.digest}", timeout=10).json()
        assert {(m["digest"], m.get("artifactType")) for m in listed["manifests"]} == {
            (signed.sbom.digest, SBOM_TYPE), (sha256(index), "application/vnd.example.set")}


def test_an_untrusted_registry_cannot_make_a_pull_fetch_without_end_nor_slip_in_another_image_s_referrer(
        store: BlobStore, registry: Registry, signed: Signed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(referrers_module, "MAX_REFERRERS", 2)
    assert len(pull(store, signed.ref).referrers) == 2  # of the three it holds

    other = Signed(registry, tmp_path / "other", f"{signed.repo}-x", seed=7)  # its tag schema lists a stranger
    for data in signed.sbom.blobs.values():
        push_blob(registry.url, other.repo, data)
    put_manifest(registry.url, other.repo, signed.sbom.digest, signed.sbom.manifest)
    write_tag_schema(registry.url, other.repo, other.digest, [other.sbom, signed.sbom])
    fresh = BlobStore(tmp_path / "fresh")
    with pytest.raises(InvalidManifest, match=f"listed for {other.digest} but names {signed.digest}"):
        pull(fresh, other.ref)
    assert not fresh.has(parse_digest(signed.sbom.digest))
