"""SBOMs answered from the scan records alone, never by a scan: what the web view shows and offers.

The view lists package counts on every page load and offers each SBOM for download; neither may
read a layer (a scan of a large image takes seconds, and the view is read-only). A scan happens
only through ``layerhoard sbom``. Which images are covered is found in two queries (the records'
keys, each blob's diff_id) against the blobs each image reaches, which the caller walked already;
only those images are loaded and merged (milliseconds each), so a cache nobody scanned costs
two queries.
"""

from __future__ import annotations

from cache.errors import LayerhoardError
from cache.model.digest import Digest
from cache.sbom.generate import ImageSbom, image_sbom
from cache.sbom.records import record_key
from cache.store.blobstore import BlobStore
from cache.store.images import load_image


def scanned_images(store: BlobStore, image_blobs: dict[str, set[Digest]]) -> list[str]:
    """The names of images that reach a blob with a scan record (``image_blobs``: name -> every
    blob it reaches). Candidates: :func:`stored_sbom` tells whether every layer has one."""
    scanned = set(store.index.keys_under(record_key("")))
    if not scanned:
        return []
    covered = {blob for blob, diff_id in store.index.diff_ids_of_blobs().items() if diff_id in scanned}
    return [ref for ref, blobs in image_blobs.items() if any(str(blob) in covered for blob in blobs)]


def stored_sbom(store: BlobStore, ref: str) -> ImageSbom:
    """The SBOM of the cached image ``ref`` (this host's platform, else a stored one) from its
    layers' scan records; NotScanned when a layer has none, ImageNotFound when it is not cached."""
    return image_sbom(load_image(store, ref), scan=False)


def package_counts(store: BlobStore, image_blobs: dict[str, set[Digest]]) -> dict[str, int]:
    """Packages in the SBOM of every image whose layers are all scanned, by name."""
    counts = {}
    for ref in scanned_images(store, image_blobs):
        try:
            counts[ref] = len(stored_sbom(store, ref).packages)
        except LayerhoardError:
            continue  # a layer not scanned, an artifact, or evicted meanwhile: no count to show
    return counts
