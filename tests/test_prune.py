"""prune against real pulls from the registry: size caps, pins, recent and kept images, shared blobs,
orphans in grace, writes in progress, and a dry run that equals the real run."""

from __future__ import annotations

import os
import time

import pytest

from cache.errors import ImageNotFound
from cache.ingest.pull import pull
from cache.model.digest import parse_digest
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.upkeep.gc import gc
from cache.upkeep.prune import PrunePolicy, blob_sizes, prune, resolve_ref
from tests.lifecycle_support import Pushed, assert_store_sound, image_blobs, push_images, refs, small_specs, stored
from tests.services import Registry

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    return push_images(registry, tmp_path_factory.mktemp("prune-images"), "prune", small_specs(500))


def pull_all(store: BlobStore, images: dict[str, Pushed], order: str = "abc") -> None:
    """Pull in ``order``: the first is the least recently used."""
    for name in order:
        pull(store, images[name].ref)


def set_last_used(store: BlobStore, ref: str, when: float) -> None:
    record = store.index.image(ref)
    assert record is not None
    record["last_used"] = when
    store.index._set(f"image/{ref}", record)


def age(store: BlobStore, images: dict[str, Pushed], days: float) -> float:
    """Make every image and blob look last used ``days`` ago; returns now."""
    now = time.time()
    for ref in refs(store):
        set_last_used(store, ref, now - 86400 * days)
    for digest, record in list(store.index.blobs()):
        record["last_used"] = now - 86400 * days
        store.index._set(f"blob/{digest}", record)
    for digest in store.digests():
        os.utime(store.path(digest), (now - 86400 * days, now - 86400 * days))
    return now


def own_bytes(images: dict[str, Pushed], name: str) -> int:
    image = images[name].image
    paths = [image.layout / "blobs" / "sha256" / d[7:] for d in image_blobs(image)]
    return sum(p.stat().st_size for p in paths)


def test_size_cap_evicts_least_recently_used_first(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull_all(store, images, "abc")
    cap = own_bytes(images, "c") + 1000  # only c fits
    done = prune(store, PrunePolicy(max_size=cap))
    assert done is not None
    assert [image["ref"] for image in done.images] == [images["a"].ref, images["b"].ref]
    assert refs(store) == {images["c"].ref}
    assert sum(blob_sizes(store).values()) <= cap
    assert stored(store) == image_blobs(images["c"].image)  # the shared base went with a and b
    assert done.freed_bytes == done.bytes_before - sum(blob_sizes(store).values())
    assert_store_sound(store)


def test_shared_blob_stays_while_a_kept_image_needs_it(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull_all(store, images, "abc")
    total = sum(blob_sizes(store).values())
    a_only = image_blobs(images["a"].image) - image_blobs(images["b"].image)
    a_only_bytes = sum(store.size(parse_digest(d)) for d in a_only)
    done = prune(store, PrunePolicy(max_size=total - a_only_bytes))  # evicting a alone is enough
    assert done is not None and [image["ref"] for image in done.images] == [images["a"].ref]
    base = images["a"].image.layers[0].digest
    assert base in stored(store) and base == images["b"].image.layers[0].digest
    assert not (a_only & stored(store))
    assert refs(store) == {images["b"].ref, images["c"].ref}
    assert_store_sound(store)


def test_pins_recent_and_kept_images_survive_prune_all(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull_all(store, images, "abc")
    now = age(store, images, 10)
    set_last_used(store, images["c"].ref, now - 60)  # used a minute ago
    pins.pin(store, images["a"].ref)
    done = prune(store, PrunePolicy(evict_all=True, keep_duration=3600))
    assert done is not None
    assert [image["ref"] for image in done.images] == [images["b"].ref]
    assert done.protected == {images["a"].ref: "pinned", images["c"].ref: "recent"}
    assert refs(store) == {images["a"].ref, images["c"].ref}
    assert stored(store) == image_blobs(images["a"].image) | image_blobs(images["c"].image)
    # --keep protects what it names; unpinned a goes, c (kept) stays
    pins.unpin(store, images["a"].ref)
    done = prune(store, PrunePolicy(evict_all=True, keep=frozenset({images["c"].ref})))
    assert done is not None and [image["ref"] for image in done.images] == [images["a"].ref]
    assert stored(store) == image_blobs(images["c"].image)


def test_dry_run_equals_the_real_run(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull_all(store, images, "bca")
    before = stored(store)
    cap = own_bytes(images, "a") + own_bytes(images, "c")
    dry = prune(store, PrunePolicy(max_size=cap), dry_run=True)
    assert dry is not None and dry.dry_run
    assert stored(store) == before  # nothing changed
    real = prune(store, PrunePolicy(max_size=cap))
    assert real is not None
    dry_json, real_json = dry.to_json(), real.to_json()
    assert dry_json.pop("dry_run") is True and real_json.pop("dry_run") is False
    assert dry_json == real_json
    assert [image["ref"] for image in real.images] == [images["b"].ref]
    assert before - stored(store) == {str(d) for d, _ in real.blobs}


def test_young_orphans_and_writes_in_progress_are_left_alone(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull(store, images["c"].ref)
    orphan = store.put_bytes(b"a blob no image names")  # as a pull in progress leaves it
    busy = store.put_bytes(b"another orphan, being rewritten")
    assert prune(store, PrunePolicy(max_size=10**12)) is not None
    assert store.has(orphan)  # within the 10 minute grace
    with store.lock(busy):  # a writer holds the digest's lock
        done = prune(store, PrunePolicy(max_size=10**12, grace=0))
        assert done is not None and [d for d, _ in done.blobs] == [orphan]
    assert store.has(busy) and not store.has(orphan)
    assert refs(store) == {images["c"].ref}  # under the cap: no image evicted


def test_blob_reused_after_its_image_was_used_is_kept(store: BlobStore, images: dict[str, Pushed]) -> None:
    """A pull in progress reusing a blob of an image being evicted touches the blob first."""
    pull_all(store, images, "ab")
    now = age(store, images, 1)
    set_last_used(store, images["a"].ref, now - 7200)
    set_last_used(store, images["b"].ref, now - 3600)
    own = parse_digest(images["a"].image.layers[1].digest)
    store.index.touch_blobs([own])  # what BlobPuller does for the layers it reuses
    done = prune(store, PrunePolicy(evict_all=True))
    assert done is not None and {image["ref"] for image in done.images} == {images["a"].ref, images["b"].ref}
    assert stored(store) == {str(own)}


def test_gc_keeps_pinned_images_even_when_index_json_lost_them(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull_all(store, images, "ac")
    pins.pin(store, images["a"].ref)
    store.remove_image(images["a"].ref)
    store.remove_image(images["c"].ref)
    result = gc(store, grace=0)
    assert {str(d) for d in result.removed_blobs} == image_blobs(images["c"].image)
    assert stored(store) == image_blobs(images["a"].image)


def test_refs_resolve_as_pull_records_them(store: BlobStore, images: dict[str, Pushed]) -> None:
    pull(store, images["a"].ref)
    ref = images["a"].ref
    assert resolve_ref(store, ref) == ref
    assert resolve_ref(store, f"docker://{ref}") == ref
    with pytest.raises(ImageNotFound, match="not in the cache"):
        resolve_ref(store, "docker.io/library/nothing:1")

