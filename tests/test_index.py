"""The metadata index: JSON only, never pickle (invariant 7), and every record round-trips."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cache.errors import LayerhoardError
from cache.model.digest import sha256_of
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.store.metadata import DBNAME, MetadataIndex
from cache.upkeep.rebuild_index import rebuild_index

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MODE_PICKLE = 4  # diskcache.core.MODE_PICKLE


class Anything:
    pass


def pickled_rows(store: BlobStore) -> int:
    """Rows of diskcache's SQLite table whose key or value was pickled."""
    with sqlite3.connect(store.root / "meta" / "cache.db") as db:
        return int(db.execute("SELECT count(*) FROM Cache WHERE mode = ? OR raw = 0", (MODE_PICKLE,)).fetchone()[0])


@pytest.mark.parametrize("value", [{"a": 1}, ["a"], ("a",), {1, 2}, Anything(), None, True], ids=repr)
def test_refuses_values_that_would_be_pickled(store: BlobStore, value: Any) -> None:
    with pytest.raises(TypeError, match="metadata values must be JSON text"):
        store.index._cache.set("stray", value)
    assert store.index._cache.get("stray") is None


@pytest.mark.parametrize("key", [("blob", "x"), 1.5j, None, Anything()], ids=repr)
def test_refuses_keys_that_would_be_pickled(store: BlobStore, key: Any) -> None:
    with pytest.raises(TypeError, match="metadata keys must be str or bytes"):
        store.index._cache.set(key, "value")


def test_blob_records_round_trip(store: BlobStore) -> None:
    digest = store.put_bytes(b"layer bytes", "application/octet-stream", "registry:docker.io")
    record = store.index.blob(digest)
    assert record is not None
    assert record["size"] == 11 and record["media_type"] == "application/octet-stream"
    assert record["source"] == "registry:docker.io" and len(record["blake3"]) == 64
    before = record["last_used"]
    store.index.touch_blobs([digest, sha256_of(b"not stored")])
    touched = store.index.blob(digest)
    assert touched is not None and touched["last_used"] >= before
    assert dict(store.index.blobs()) == {digest: touched}
    assert pickled_rows(store) == 0


def test_diff_id_pairs_round_trip_and_follow_drops(store: BlobStore) -> None:
    diff_id = sha256_of(b"uncompressed tar")
    zstd_blob, gzip_blob = store.put_bytes(b"zstd form"), store.put_bytes(b"gzip form")
    store.index.record_diff_id(zstd_blob, diff_id, ZSTD)
    store.index.record_diff_id(gzip_blob, diff_id, GZIP)
    assert store.index.blobs_for_diff_id(diff_id) == {zstd_blob: ZSTD, gzip_blob: GZIP}
    assert store.index.diff_id_of(zstd_blob) == diff_id
    assert store.index.diff_id_of(store.put_bytes(b"no pair")) is None
    store.delete(zstd_blob)
    assert store.index.blobs_for_diff_id(diff_id) == {gzip_blob: GZIP}
    assert store.index.diff_id_of(zstd_blob) is None
    store.index.drop_blob(gzip_blob)
    assert store.index.blobs_for_diff_id(diff_id) == {}
    assert pickled_rows(store) == 0


def test_image_records_round_trip(store: BlobStore) -> None:
    index = store.index
    record = {"digest": str(sha256_of(b"m1")), "media_type": "m", "size": 2, "platform": "linux/amd64",
              "source": "registry"}
    index.record_image("docker.io/library/a:1", record)
    first = index.image("docker.io/library/a:1")
    assert first is not None and {k: first[k] for k in record} == record and first["ref"] == "docker.io/library/a:1"
    index.record_image("docker.io/library/a:1", record)  # same digest again: stored_at is kept
    again = index.image("docker.io/library/a:1")
    assert again is not None and again["stored_at"] == first["stored_at"] and again["last_used"] >= first["last_used"]
    index.record_image("docker.io/library/a:1", {**record, "digest": str(sha256_of(b"m2"))})
    moved = index.image("docker.io/library/a:1")
    assert moved is not None and moved["digest"] == str(sha256_of(b"m2"))
    index.touch_image("docker.io/library/a:1")
    assert [ref for ref, _ in index.images()] == ["docker.io/library/a:1"]
    index.drop_image("docker.io/library/a:1")
    assert index.image("docker.io/library/a:1") is None
    assert pickled_rows(store) == 0


def test_pins_round_trip(store: BlobStore) -> None:
    pins.pin(store, "docker.io/library/a:1")
    pins.pin(store, "127.0.0.1:5000/team/app:1")
    assert pins.pins(store) == {"docker.io/library/a:1", "127.0.0.1:5000/team/app:1"}
    assert pins.unpin(store, "docker.io/library/a:1") is True
    assert pins.unpin(store, "docker.io/library/a:1") is False
    assert pins.pins(store) == {"127.0.0.1:5000/team/app:1"}
    assert pickled_rows(store) == 0


def test_pins_outlive_an_emptied_index(store: BlobStore) -> None:
    """A metadata index truncated to nothing is refused (not silently made anew), and the pins,
    which no rebuild could find in the files, survive the rebuild."""
    store.put_bytes(b"a blob")
    pins.pin(store, "docker.io/library/a:1")
    store.close()
    (store.root / "meta" / DBNAME).write_bytes(b"")
    with pytest.raises(LayerhoardError, match=r"damaged.*gc --rebuild-index"):
        BlobStore(store.root).index  # noqa: B018 - opening is the test
    reopened = BlobStore(store.root)
    rebuild_index(reopened)
    assert pins.pins(reopened) == {"docker.io/library/a:1"}
    reopened.close()


def test_pins_of_an_older_cache_move_to_pins_json(store: BlobStore) -> None:
    store.index._set("pin/docker.io/library/old:1", 1.0)  # how caches before pins.json kept them
    assert pins.pins(store) == {"docker.io/library/old:1"}
    pins.pin(store, "docker.io/library/new:1")
    assert pins.pins(store) == {"docker.io/library/old:1", "docker.io/library/new:1"}
    assert store.index.legacy_pins() == {}


def _count(root: str, times: int) -> None:
    store = BlobStore(root)
    for _ in range(times):
        store.index.count("pulls")
    store.close()


def test_counters_add_up_across_processes(store: BlobStore) -> None:
    store.index.count("bytes_fetched", 1000)
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_count, args=(str(store.root), 25), daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert store.index.counters() == {"bytes_fetched": 1000, "pulls": 100}
    assert pickled_rows(store) == 0


def test_index_reopens_with_its_data(tmp_path: Path) -> None:
    index = MetadataIndex(tmp_path / "meta", tmp_path / "meta.lock")
    index.count("pulls", 3)
    index.close()
    reopened = MetadataIndex(tmp_path / "meta", tmp_path / "meta.lock")
    assert reopened.counters() == {"pulls": 3}
    reopened.close()
