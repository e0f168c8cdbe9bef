"""Images in the store: record one (index.json plus its metadata) and read one back.

An image is recorded only once every blob it names is stored, so a reader that finds a ref in
index.json can always open all of it (or gets a clear "evicted, fetch again" error if prune raced).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from cache.errors import BlobNotFound, ImageNotFound, InvalidManifest, LayerhoardError, evicted_while_read
from cache.model.digest import Digest
from cache.model.manifests import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    artifact_config,
    children_of,
    parse_config,
    parse_manifest_or_index,
)
from cache.store.blobstore import BlobStore
from cache.store.graph import ContentGraph


class BlobsEvicted(BlobNotFound):
    """An image could not be recorded: blobs it needs are gone (prune or gc removed them meanwhile)."""


class CachedImage(NamedTuple):
    """One platform's image as stored: its manifest, config, and layers readable as streams.
    ``platforms`` is the multi-platform index the name points at (None for a plain manifest), and
    ``chosen`` whether the platform was asked for (else the host's was taken)."""

    store: BlobStore
    ref: str
    manifest: Manifest
    config: ImageConfig
    platforms: Index | None = None
    chosen: bool = False

    def stored_platforms(self) -> list[Descriptor]:
        """The index's manifests that are stored (a single-platform pull keeps its index whole,
        but stores only the platform it pulled); the manifest alone for a plain image."""
        if self.platforms is None:
            return [self.manifest.descriptor(self.config.platform)]
        return [entry for entry in self.platforms.manifests if self.store.has(entry.digest)]

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    def require_image(self, what: str) -> None:
        """Refuse, in one line, to do ``what`` (needs a file system, so its layers' diff_ids) with an
        OCI artifact, or with a layer whose bytes do not match its diff_id: claims a pull left
        pending are checked first (cache/store/diffids.py)."""
        kind = self.manifest.artifact_type
        if kind is not None:
            raise LayerhoardError(f"{self.ref} is an OCI artifact ({kind}), not a container image: "
                                  f"{what} needs an image (export it to oci:DIR instead)")
        if len(self.config.diff_ids) == len(self.layers):  # else the caller's own check says so
            from cache.store.diffids import require_diff_ids

            pairs = zip(self.layers, self.config.diff_ids, strict=True)
            try:
                require_diff_ids(self.store, [(layer.digest, diff_id, layer.media_type) for layer, diff_id in pairs])
            except BlobNotFound as error:
                raise evicted_while_read(self.ref, error) from None

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    def open_layer(self, layer: Descriptor | int) -> BinaryIO:
        """The stored (compressed) bytes of one layer."""
        descriptor = self.manifest.layers[layer] if isinstance(layer, int) else layer
        return self.store.open(descriptor.digest)


def blobs_of(store: BlobStore, root: Digest, graph: ContentGraph | None = None) -> Iterator[Digest]:
    """Every blob reachable from a manifest or index digest, the root included.

    Only manifests and indexes are read (never a layer); a child that is not stored is still
    yielded, so callers can tell what is missing. With ``graph`` (gc, prune, sizes) the edges no
    manifest names are followed too: blobs derived here from a reached one (leaves), and the
    referrers and cosign-tag manifests of a reached manifest (walked as manifests). Without it,
    only what the image itself names: what must be stored before the image is named.
    """
    pending = [root]
    seen: set[Digest] = set()

    def follow(digest: Digest) -> list[Digest]:
        """The edges no manifest names, of a blob that has some (``graph.has_edges``, false for
        nearly all): referrers and cosign manifests are walked, derived blobs returned as leaves."""
        assert graph is not None
        pending.extend(graph.attached_to(digest))
        made = [blob for blob in graph.derived_from(digest) if blob not in seen]
        seen.update(made)
        return made

    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        yield digest
        if graph is not None and graph.has_edges(digest):
            yield from follow(digest)
        try:
            if store.size(digest) > MAX_MANIFEST_BYTES:
                continue  # not a manifest: never read a big blob into memory
            children = children_of(store.read_bytes(digest), what=f"manifest {digest}")
        except (InvalidManifest, BlobNotFound):
            continue  # missing or damaged: nothing below it can be named
        if children.is_index:
            pending.extend(children.digests)
            continue
        for leaf in children.digests:  # config and layers: never read
            if leaf not in seen:
                seen.add(leaf)
                yield leaf
                if graph is not None and graph.has_edges(leaf):
                    yield from follow(leaf)


def missing_blobs(store: BlobStore, root: Digest) -> list[Digest]:
    """What must be stored before ``root`` can be named: a manifest's config and layers. An index
    may name platforms that were never pulled (a pull of one platform keeps the index whole), so
    for an index: every platform manifest of it that is stored, complete, and at least one."""
    if not store.has(root):
        return [root]
    try:
        children = children_of(store.read_bytes(root), what=f"manifest {root}")
    except InvalidManifest:
        return []  # not a manifest: the blob itself is all there is
    except BlobNotFound:
        return [root]
    if not children.is_index:
        return [digest for digest in children.digests if not store.has(digest)]
    stored = [child for child in children.digests if store.has(child)]
    if not stored:
        return children.digests[:1]
    return [digest for child in stored for digest in missing_blobs(store, child)]


def record_image(
    store: BlobStore,
    ref: str,
    top: Manifest | Index,
    *,
    platform: Platform | None,
    source: str,
) -> None:
    """Name a fully stored manifest or index ``ref`` in index.json and in the metadata index.

    The completeness check runs under index.json's lock, which prune and gc hold while they delete:
    a blob this pull found stored but that was evicted since gives :class:`BlobsEvicted`, never
    an incomplete image in index.json.
    """

    def check_complete() -> None:
        missing = missing_blobs(store, top.digest)
        if missing:
            raise BlobsEvicted(
                f"cannot record {ref}: {len(missing)} blob(s) missing, first {missing[0]} "
                "(evicted while in use; pull again)"
            )

    descriptor = Descriptor(top.media_type, top.digest, len(top.raw), platform)
    store.set_image(ref, descriptor.to_json(), check=check_complete)
    store.index.record_image(
        ref,
        {
            "digest": str(top.digest),
            "media_type": top.media_type,
            "size": len(top.raw),
            "platform": str(platform) if platform else None,
            "source": source,
        },
    )


def load_image(store: BlobStore, ref: str, platform: Platform | None = None) -> CachedImage:
    """The stored image named ``ref``; for an index, the manifest for ``platform`` (default the host's)."""
    entry = store.image_descriptor(ref)
    if entry is None:
        raise ImageNotFound(f"{ref} is not in the cache; pull it first")
    descriptor = Descriptor.from_json(entry, f"index.json entry {ref}")
    return load_manifest(store, ref, descriptor.digest, platform)


def _stored_platform(store: BlobStore, ref: str, index: Index, platform: Platform | None) -> Descriptor:
    """The index's manifest to read: ``platform``'s, which must be stored; with none asked, the
    host's when stored, else the first stored one (a name pulled for arm64 on an amd64 host)."""
    try:
        chosen: Descriptor | None = index.choose(platform or Platform.host())
    except InvalidManifest:
        if platform is not None:
            raise
        chosen = None
    if platform is None and (chosen is None or not store.has(chosen.digest)):
        chosen = next((entry for entry in index.images() if store.has(entry.digest)), chosen)
    if chosen is None or not store.has(chosen.digest):
        wanted = platform or (chosen.platform if chosen else None) or Platform.host()
        raise ImageNotFound(f"{ref}: platform {wanted} is not in the cache; pull it with --platform {wanted}")
    return chosen


def load_manifest(store: BlobStore, ref: str, digest: Digest, platform: Platform | None = None) -> CachedImage:
    try:
        parsed = parse_manifest_or_index(store.read_bytes(digest), what=f"manifest of {ref}")
        index = parsed if isinstance(parsed, Index) else None
        if index is not None:
            chosen = _stored_platform(store, ref, index, platform)
            parsed = parse_manifest_or_index(store.read_bytes(chosen.digest), what=f"manifest of {ref}")
        if not isinstance(parsed, Manifest):
            raise InvalidManifest(f"manifest of {ref}: nested index is not supported")
        raw_config = store.read_bytes(parsed.config.digest)
        config = parse_config(raw_config, f"config of {ref}") if parsed.artifact_type is None \
            else artifact_config(raw_config)
    except BlobNotFound as error:
        raise evicted_while_read(ref, error) from None
    return CachedImage(store, ref, parsed, config, index, platform is not None)
