"""DELETE (``serve --allow-delete``): tags, manifests and blobs, without breaking any other image.

- A tag: its name goes from index.json and the metadata index; the manifest is left to gc (other
  tags may name it).
- A manifest by digest: every name in that repository that points at it goes, its referrer edge
  goes (a deleted signature is no longer listed for its subject), and its blob is deleted when no
  image or pin in the cache still reaches it. When one still does (the same bytes named in another
  repository), the blob stays for them and the repository remembers the deletion
  (:class:`Deleted`): a GET by digest there answers 404 until the manifest is pushed there again.
- A blob: deleted when no image or pin reaches it, else refused (405), so every image index.json
  names stays complete (the store's invariant).

Everything runs under index.json's lock, the one gc and prune sweep under and record_image checks
completeness under, so no name is recorded for a blob while it is deleted. The reach is gc's mark
(cache.upkeep.gc.live_blobs): a DELETE costs what a gc's mark costs, fine for an occasional call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from cache.formats.index_json import typed_entries
from cache.model.digest import Digest
from cache.model.manifests import subject_of
from cache.server.content import named_entries, stored_manifest, tagged_entry
from cache.server.errors import RegistryError
from cache.server.names import Repository
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.store.graph import unlink_referrer
from cache.upkeep.gc import live_blobs

MAX_REMEMBERED = 10_000  # deletions remembered per process; the oldest is forgotten first


class Deleted:
    """Manifests deleted in a repository whose bytes stay for other images: (repository, digest),
    answered 404 there. Kept in memory, bounded; a restart forgets them (the names are gone for good)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, Digest], None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, repo: Repository, digest: Digest) -> None:
        with self._lock:
            self._items[(repo.full, digest)] = None
            while len(self._items) > MAX_REMEMBERED:
                self._items.popitem(last=False)

    def discard(self, repo: Repository, digest: Digest) -> None:
        with self._lock:
            self._items.pop((repo.full, digest), None)

    def __contains__(self, key: tuple[Repository, Digest]) -> bool:
        with self._lock:
            return (key[0].full, key[1]) in self._items


def delete_tag(store: BlobStore, repo: Repository, tag: str) -> None:
    """Remove the name ``repo:tag`` answers with (a pushed one first: see content.tagged_entry)."""
    found = tagged_entry(store, repo, tag)
    if found is None or not store.remove_image(found[0]):
        raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", {"tag": tag})
    _forget(store, found[0])


def _forget(store: BlobStore, name: str) -> None:
    """What the cache knew of a deleted name: its record, and its pin (a pin keeps a name from
    prune; a name deleted on purpose has nothing left to keep, and a later image of that name
    must not come back pinned)."""
    store.index.drop_image(name)
    pins.unpin(store, name)


def delete_manifest(store: BlobStore, repo: Repository, digest: Digest, deleted: Deleted) -> None:
    """Delete the manifest ``digest`` from ``repo``: its names there, its referrer edge, and its bytes
    unless another image still reaches them."""
    body = stored_manifest(store, digest)
    if body is None or (repo, digest) in deleted:
        raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", {"digest": str(digest)})
    with store.index_json_lock():
        entries = store.images()
        dropped = [entry for ref, entry in named_entries(typed_entries(entries))
                   if ref.name == repo.full and entry.digest == digest]
        if dropped:
            gone = {id(entry.raw) for entry in dropped}  # the very dicts of ``entries``
            store.replace_images([entry for entry in entries if id(entry) not in gone])
            for entry in dropped:
                _forget(store, str(entry.name))
        named = subject_of(body.raw)
        if named is not None:
            unlink_referrer(store, named[0], digest)
        if digest in live_blobs(store):
            deleted.add(repo, digest)  # another repository's image needs the bytes
        else:
            store.delete(digest)


def delete_blob(store: BlobStore, digest: Digest) -> None:
    if not store.has(digest):
        raise RegistryError("BLOB_UNKNOWN", "blob unknown to registry", {"digest": str(digest)})
    with store.index_json_lock():
        if digest in live_blobs(store):
            raise RegistryError("UNSUPPORTED", "an image in the cache still uses this blob; delete the image first",
                                {"digest": str(digest)})
        store.delete(digest)
