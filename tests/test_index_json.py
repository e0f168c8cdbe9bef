"""index.json at scale: one module reads and writes it (cache/formats/index_json.py), the store keeps what it
wrote in memory, and a warm names its images in batches, each checked again before it is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cache.errors import LayerhoardError
from cache.formats.index_json import REF_NAME, ref_name_of
from cache.ingest.pull import PullOptions, pull
from cache.ingest.warm import warm
from cache.model.digest import sha256_of
from cache.store.blobstore import BlobStore
from tests.images import build_image, random_layer
from tests.lifecycle_support import REPO_ROOT


def _descriptor(data: bytes) -> dict[str, object]:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(sha256_of(data)),
            "size": len(data)}


def test_index_json_is_an_oci_index_with_one_entry_per_line(store: BlobStore) -> None:
    for name in ("b", "a", "c"):
        store.set_image(f"example.com/{name}:1", _descriptor(name.encode()))
    raw = (store.root / "index.json").read_bytes()
    document = json.loads(raw)
    assert document["schemaVersion"] == 2 and document["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [ref_name_of(e) for e in document["manifests"]] == ["example.com/a:1", "example.com/b:1", "example.com/c:1"]
    assert sum(1 for line in raw.splitlines() if REF_NAME.encode() in line) == 3  # one entry a line


def test_a_write_by_another_process_is_seen(store: BlobStore) -> None:
    store.set_image("example.com/a:1", _descriptor(b"a"))
    assert [ref_name_of(e) for e in store.images()] == ["example.com/a:1"]  # now held in memory
    script = ("import sys; from cache.store.blobstore import BlobStore; "
              "BlobStore(sys.argv[1]).set_image('example.com/b:1', "
              "{'mediaType': 'x', 'digest': 'sha256:' + 'b' * 64, 'size': 1})")
    subprocess.run([sys.executable, "-c", script, str(store.root)], check=True, cwd=REPO_ROOT)
    assert [ref_name_of(e) for e in store.images()] == ["example.com/a:1", "example.com/b:1"]


def test_deferred_names_are_written_once_and_checked_again(store: BlobStore) -> None:
    before = (store.root / "index.json").stat().st_ino

    def evicted() -> None:
        raise LayerhoardError("a blob was evicted")

    with store.deferred_names() as names:
        store.set_image("example.com/a:1", _descriptor(b"a"))
        store.set_image("example.com/b:1", _descriptor(b"b"), check=evicted)
        assert (store.root / "index.json").stat().st_ino == before  # nothing written yet
    assert [ref_name_of(e) for e in store.images()] == ["example.com/a:1"]
    assert names.failed == {"example.com/b:1": "a blob was evicted"}


def test_warm_names_every_image(store: BlobStore, tmp_path: Path) -> None:
    sources = []
    for n in range(5):
        image = build_image(tmp_path / f"img{n}", [random_layer(3000, 40 + n)], tag="1")
        sources.append(f"oci:{image.layout}:1")
    pull(store, sources[0], PullOptions())
    result = warm(store, sources, PullOptions())
    assert not result.failures and len(result.reports) == 5
    assert {ref_name_of(e) for e in store.images()} == {f"localhost/img{n}:1" for n in range(5)}
