"""The content graph's own edges (cache/store/graph.py): what an export transcoded lives as long as the
image, a referrer lives as long as its subject, and gc --rebuild-index keeps every name, pin and
referrer."""

from __future__ import annotations

import json
from pathlib import Path

from cache.formats.index_json import ref_name_of
from cache.model.digest import parse_digest
from cache.sinks import export
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.store.graph import ContentGraph, link_referrer
from cache.store.images import blobs_of, load_image
from cache.upkeep.gc import gc
from cache.upkeep.rebuild_index import rebuild_index
from tests.test_export import cached

ARTIFACT = "application/vnd.example.signature.v1+json"


def test_transcoded_blobs_survive_gc_and_are_reused(store: BlobStore, tmp_path: Path) -> None:
    cached(store, tmp_path, "docker.io/library/zapp:1", compression="zstd")
    first = export(store, load_image(store, "docker.io/library/zapp:1"), f"oci:{tmp_path / 'a'}", "gzip")
    made = {parse_digest(layer["digest"]) for layer in first.layers} | {parse_digest(first.digest)}
    assert all(layer["transcoded"] for layer in first.layers)
    gc(store, grace=0)  # the transcoded blobs are named by no manifest in index.json
    assert all(store.has(digest) for digest in made)
    second = export(store, load_image(store, "docker.io/library/zapp:1"), f"oci:{tmp_path / 'b'}", "gzip")
    assert all(layer["reused"] and not layer["transcoded"] for layer in second.layers)
    store.remove_image("docker.io/library/zapp:1")  # once the image goes, so do they
    gc(store, grace=0)
    assert not any(store.has(digest) for digest in made)


def _referrer(store: BlobStore, subject: str) -> tuple[str, str]:
    """A signature-like artifact manifest naming ``subject``: (its digest, its payload's digest)."""
    payload = store.put_bytes(b'{"critical": "signed"}')
    empty = store.put_bytes(b"{}")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(empty), "size": 2},
        "layers": [{"mediaType": ARTIFACT, "digest": str(payload), "size": 22}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 1},
    }).encode()
    return str(store.put_bytes(manifest)), str(payload)


def test_a_referrer_lives_as_long_as_its_subject_and_survives_a_rebuild(store: BlobStore, tmp_path: Path) -> None:
    image = cached(store, tmp_path, "docker.io/library/signed:1")
    referrer, payload = _referrer(store, image.manifest_digest)
    link_referrer(store, parse_digest(image.manifest_digest), parse_digest(referrer), ARTIFACT)
    gc(store, grace=0)
    assert store.has(parse_digest(referrer)) and store.has(parse_digest(payload))

    rebuild_index(store)  # the edge is found again from the referrer's subject
    graph = ContentGraph.load(store)
    assert graph.referrers[image.manifest_digest] == {referrer: ARTIFACT}
    reached = set(blobs_of(store, parse_digest(image.manifest_digest), graph))
    assert {referrer, payload} <= reached
    assert referrer not in set(blobs_of(store, parse_digest(image.manifest_digest)))  # not needed to name it

    store.remove_image("docker.io/library/signed:1")
    gc(store, grace=0)
    assert not store.has(parse_digest(referrer)) and not store.has(parse_digest(payload))


def test_every_name_and_pin_survives_a_rebuild(store: BlobStore, tmp_path: Path) -> None:
    for n in range(3):
        cached(store, tmp_path, f"docker.io/library/kept{n}:1", seed=10 + n)
    pins.pin(store, "docker.io/library/kept1:1")
    names = {ref_name_of(entry) for entry in store.images()}
    blobs = set(store.digests())
    rebuild_index(store)
    assert {ref_name_of(entry) for entry in store.images()} == names
    assert pins.pins(store) == {"docker.io/library/kept1:1"}
    assert {ref for ref, _ in store.index.images()} == names
    gc(store, grace=0)
    assert set(store.digests()) == blobs
