"""Re-compress an image's layers for a consumer: deterministic, verified, and kept in the store.

Same input, same bytes: gzip is isal's deflate at a fixed level with a bare header (mtime 0, no
file name), zstd is :func:`cache.formats.compression.zstd_compressor`. A transcoded layer is stored as a
blob of its own and its diff_id pair recorded, but only after the uncompressed bytes were hashed
here and matched the config's diff_id (invariant 4). A second export finds it again through
``blobs_for_diff_id`` and compresses nothing.

The transcoded image gets a new OCI manifest (same config bytes, new layer descriptors), stored
as a blob too. Each made blob is linked from what it was made from (cache/store/graph.py ``derived``), so
gc and prune keep it as long as an image reaches the original, and count it in that image's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cache.errors import DigestMismatch, LayerhoardError
from cache.formats import compression as codecs
from cache.formats.compression import decompressing, zstd_compressor
from cache.model.digest import Digest, iter_chunks
from cache.model.manifests import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    Descriptor,
    Manifest,
    build_manifest,
    compression_of,
    parse_manifest,
)
from cache.store.blobstore import BlobStore
from cache.store.graph import link_derived
from cache.store.images import CachedImage

COMPRESSIONS = ("keep", "gzip", "zstd", "none")
GZIP_LEVEL = 1  # isal's levels are 0-3; 1 runs at about 1.2 GB/s here with gzip -1's ratio
TRANSCODE_SOURCE = "transcode"  # the index's source tag of blobs made here: the only ones reused
# isal where installed, else zlib: chosen once by cache.formats.compression
_ZLIB: Any = codecs.fast_zlib  # type: ignore[attr-defined]
LAYER_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}


@dataclass(frozen=True)
class LayerOutcome:
    descriptor: Descriptor
    transcoded: bool  # compressed here in this run
    reused: bool  # an earlier transcode was found in the store


@dataclass(frozen=True)
class Transcoded:
    """An image as it will be exported: its manifest (maybe new) and what happened to each layer."""

    manifest: Manifest
    layers: tuple[LayerOutcome, ...]


def transcode(store: BlobStore, image: CachedImage, compression: str, *, avoid: tuple[str, ...] = ()) -> Transcoded:
    """``image`` with every layer in ``compression``; "keep" leaves layers alone except those whose
    compression is in ``avoid`` (a consumer that cannot read them), which become gzip."""
    if compression not in COMPRESSIONS:
        raise LayerhoardError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if image.manifest.artifact_type is not None:  # an artifact's blobs are not layers: kept as they are
        return Transcoded(image.manifest, tuple(LayerOutcome(blob, False, False) for blob in image.layers))
    if len(image.config.diff_ids) != len(image.layers):
        raise LayerhoardError(f"{image.ref}: config lists {len(image.config.diff_ids)} diff_ids "
                              f"for {len(image.layers)} layers")
    outcomes = []
    for layer, diff_id in zip(image.layers, image.config.diff_ids, strict=True):
        have = compression_of(layer.media_type)
        want = compression if compression != "keep" else ("gzip" if have in avoid else have)
        if want == have:
            outcomes.append(LayerOutcome(layer, False, False))
        else:
            outcomes.append(_layer_as(store, layer, diff_id, want))
    if not any(o.transcoded or o.reused for o in outcomes):
        return Transcoded(image.manifest, tuple(outcomes))
    config = Descriptor(OCI_CONFIG, image.manifest.config.digest, image.manifest.config.size)
    raw = build_manifest(config, [o.descriptor for o in outcomes])
    link_derived(store, image.manifest.digest, store.put_bytes(raw, media_type=None, source=TRANSCODE_SOURCE))
    return Transcoded(parse_manifest(raw, what=f"transcoded manifest of {image.ref}"), tuple(outcomes))


def _layer_as(store: BlobStore, layer: Descriptor, diff_id: Digest, want: str) -> LayerOutcome:
    media_type = LAYER_TYPES[want]
    for blob, kind in store.index.blobs_for_diff_id(diff_id).items():
        record = store.index.blob(blob)
        if kind == media_type and record and record.get("source") == TRANSCODE_SOURCE and store.has(blob):
            link_derived(store, layer.digest, blob)  # kept as long as the layer (made before edges were)
            return LayerOutcome(Descriptor(media_type, blob, store.size(blob)), False, True)
    uncompressed = hashlib.sha256()
    with store.open(layer.digest) as source:
        chunks = _recompress(iter_chunks(source), compression_of(layer.media_type), want, uncompressed.update)
        digest, size, written = store.ingest_unknown(chunks, media_type, TRANSCODE_SOURCE)
    if uncompressed.hexdigest() != diff_id.hex:
        if written:
            store.delete(digest)
        raise DigestMismatch(f"layer {layer.digest} uncompresses to sha256:{uncompressed.hexdigest()}, "
                             f"but the config says {diff_id}")
    store.index.record_diff_id(digest, diff_id, media_type)
    link_derived(store, layer.digest, digest)  # gc keeps it while an image reaches the layer
    return LayerOutcome(Descriptor(media_type, digest, size), True, False)


def _recompress(chunks: Iterator[bytes], have: str, want: str, observe: Any) -> Iterator[bytes]:
    """Decompress ``have`` and compress ``want``, passing each uncompressed piece to ``observe``."""
    encoder = _Encoder(want)
    pending: list[bytes] = []

    def take(data: bytes) -> None:
        observe(data)
        pending.append(encoder.compress(data))

    decoder = decompressing(have, take)
    for chunk in chunks:
        decoder.write(chunk)
        if pending:
            yield b"".join(pending)
            pending.clear()
    decoder.close()
    pending.append(encoder.flush())
    yield b"".join(pending)


class _Encoder:
    """One fixed encoder per target compression."""

    def __init__(self, want: str) -> None:
        self._none = want == "none"
        if want == "gzip":
            self._impl: Any = _ZLIB.compressobj(GZIP_LEVEL, _ZLIB.DEFLATED, 31)
        elif want == "zstd":
            self._impl = zstd_compressor().compressobj(size=-1)
        elif not self._none:
            raise LayerhoardError(f"cannot compress layers as {want!r}")

    def compress(self, data: bytes) -> bytes:
        return data if self._none else bytes(self._impl.compress(data))

    def flush(self) -> bytes:
        return b"" if self._none else bytes(self._impl.flush())

