"""Which stored blob serves a layer, given its diff_id (the identity shared by every source)."""

from __future__ import annotations

from cache.errors import BlobNotFound
from cache.model.digest import Digest
from cache.model.manifests import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor, compression_of
from cache.store.blobstore import BlobStore
from cache.store.diffids import verified_blobs_for

OCI_TYPE_OF = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
# A registry's gzip blob first: its digest is the one the rest of the world knows; then our zstd.
_PREFERENCE = {"gzip": 0, "zstd": 1, "none": 2}


def oci_layer_type(media_type: str) -> str:
    """The OCI media type for the same bytes (Docker's gzip type names the same encoding)."""
    return OCI_TYPE_OF[compression_of(media_type)]


def stored_layer(store: BlobStore, diff_id: Digest) -> Descriptor | None:
    """A descriptor for a stored blob whose uncompressed sha256 we verified to be ``diff_id``
    (a claim a registry pull left pending is checked first: it is never trusted unchecked)."""
    choices = []
    for blob, media_type in verified_blobs_for(store, diff_id).items():
        if store.has(blob):
            compression = compression_of(media_type)
            choices.append((_PREFERENCE.get(compression, 3), str(blob), blob, compression))
    if not choices:
        return None
    _, _, blob, compression = min(choices)
    try:
        size = store.size(blob)
    except BlobNotFound:
        return None  # pruned between the two looks
    return Descriptor(OCI_TYPE_OF[compression], blob, size)

