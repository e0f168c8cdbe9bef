"""An OCI image layout as a source of referrers: what ``export oci:`` wrote beside an image.

A layout has no referrers API: a referrer is a manifest listed in index.json (unnamed, as export
and delivery bundles write it) whose ``subject`` names the image, and a cosign signature is the
manifest index.json names with cosign's tag (``sha256-<hex>.sig``). Those entries of index.json
(never the named images beside them) are read once, when the source is made, each at most 4 MiB
and checked against its digest; blobs are streamed from ``blobs/sha256`` and checked by the
BlobPuller like any pull from a layout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cache.errors import BlobNotFound, InvalidManifest
from cache.formats.index_json import REF_NAME
from cache.ingest.referrers import Listing
from cache.model.digest import Digest
from cache.model.manifests import MANIFEST_TYPES, Descriptor, Manifest, subject_of
from cache.sources.layout import fetcher, named_image, read_index, read_manifest
from cache.store.attachments import artifact_kind


class LayoutReferrers:
    """The referrers and cosign tags an OCI layout holds (cache.ingest.referrers.ReferrerSource)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fetch = fetcher(root)
        self._subjects: dict[Digest, list[tuple[Descriptor, str]]] = {}
        self._tags: dict[str, Manifest] = {}
        self._manifests: dict[Digest, Manifest] = {}
        for entry in read_index(root):
            if entry.media_type not in MANIFEST_TYPES or named_image(entry):
                continue  # an index is never a referrer here; a named image is not read (a layout of thousands)
            try:
                manifest = read_manifest(root, entry)
            except (BlobNotFound, InvalidManifest):
                continue  # not ours to judge: a pull of that entry reports it
            if not isinstance(manifest, Manifest):
                continue
            self._manifests[entry.digest] = manifest
            named = subject_of(manifest.raw)
            if named is not None:
                self._subjects.setdefault(named[0], []).append((entry, artifact_kind(manifest)))
            tag = entry.annotations.get(REF_NAME)
            if tag:
                self._tags[tag] = manifest

    def fetch(self, descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None],
              on_restart: Callable[[], None]) -> int:
        return self._fetch(descriptor, offset, on_chunk, on_restart)

    def listing(self, subject: Digest, types: tuple[str, ...]) -> Listing:
        return Listing(self._subjects.get(subject, []), "layout")

    def tagged(self, tag: str) -> bytes | None:
        found = self._tags.get(tag)
        return found.raw if found is not None else None

    def manifest(self, digest: Digest) -> bytes:
        found = self._manifests.get(digest)
        if found is None:
            raise BlobNotFound(f"{self.root}: referrer {digest} is not in the layout")
        return found.raw
