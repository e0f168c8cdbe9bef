"""Bringing one image manifest's blobs into the store from any source that can stream blobs.

The source gives a ``fetch`` function; this module does the rest, the same way for a registry and
an OCI layout: blobs already stored are reused (no byte is read from the source), new layers are
stored while their diff_id is computed in the same pass and checked against the config before
the blob becomes visible, and the verified (blob, diff_id) pair is recorded. When the store defers
that check (the command line's pulls: ``BlobStore.defer_diff_ids``), a layer is stored once its
digest and size are checked and the config's diff_id is recorded as a claim, checked after the
command by cache/store/diffids.py and trusted by nothing before.

Two things a bad day brings are taken in stride: bytes that fail a check (size, sha256, diff_id,
a gzip stream that does not decompress) are deleted and the blob fetched once more from zero,
since what failed may be a partial an earlier attempt left (an error page cut off mid-blob, then
resumed onto); and a blob that was stored when looked at but is gone when read (a prune evicted
it in between) is fetched again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from cache.errors import BlobNotFound, DigestMismatch, InvalidManifest, LayerhoardError, SizeMismatch
from cache.formats.compression import CorruptLayer, DiffIdHasher
from cache.ingest.report import LayerReport
from cache.model.digest import Digest
from cache.model.manifests import (
    MAX_CONFIG_BYTES,
    Descriptor,
    ImageConfig,
    Manifest,
    artifact_config,
    compression_of,
    parse_config,
)
from cache.progress import ProgressFactory, no_progress
from cache.store.blobstore import BlobStore, BlobWriter
from cache.store.diffids import require_diff_id
from cache.store.images import BlobsEvicted

# fetch(descriptor, offset, on_chunk, on_restart) -> bytes received from the source
Fetch = Callable[[Descriptor, int, Callable[[bytes], None], Callable[[], None]], int]


class _StoreWriteFailed(LayerhoardError):
    """Carries an OSError of the store's disk through a source's retry loop (which retries OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class PulledManifest(NamedTuple):
    manifest: Manifest
    config: ImageConfig
    layers: list[LayerReport]


class BlobPuller:
    def __init__(
        self,
        store: BlobStore,
        fetch: Fetch,
        source: str,
        *,
        jobs: int = 4,
        progress: ProgressFactory = no_progress,
    ) -> None:
        self.store = store
        self.fetch = fetch
        self.source = source
        self.jobs = max(1, jobs)
        self.progress = progress

    def small_blob(self, descriptor: Descriptor, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """A config (or other small blob): read from the store, else fetched, checked and stored."""
        if descriptor.size > limit:
            raise InvalidManifest(f"blob {descriptor.digest} is {descriptor.size} bytes, more than {limit} allowed")
        if self.store.has(descriptor.digest):
            try:
                return self.store.read_bytes(descriptor.digest)
            except BlobNotFound:
                pass  # evicted since the look: fetch it
        self._store_blob(descriptor, None, None)
        return self._read_stored(descriptor.digest)

    def pull_manifest(self, manifest: Manifest) -> PulledManifest:
        if manifest.artifact_type is not None:
            return self.pull_artifact(manifest)
        config = parse_config(self.small_blob(manifest.config), f"config {manifest.config.digest}")
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidManifest(
                f"config {manifest.config.digest} lists {len(config.diff_ids)} diff_ids "
                f"for {len(manifest.layers)} layers"
            )
        pairs = list(zip(manifest.layers, config.diff_ids, strict=True))
        missing = [(layer, diff_id) for layer, diff_id in pairs if not self.store.has(layer.digest)]
        fetched: dict[Digest, LayerReport] = {}
        if missing:  # threads (and their module) only when there is something to transfer
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.jobs, len(missing)), thread_name_prefix="layer") as pool:
                futures = [pool.submit(self.layer, layer, diff_id) for layer, diff_id in missing]
                try:
                    results = zip(missing, futures, strict=True)
                    fetched = {layer.digest: future.result() for (layer, _), future in results}
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        reports = [fetched.get(layer.digest) or self.layer(layer, diff_id) for layer, diff_id in pairs]
        self.store.index.touch_blobs([layer.digest for layer in manifest.layers] + [manifest.config.digest])
        return PulledManifest(manifest, config, reports)

    def pull_artifact(self, manifest: Manifest) -> PulledManifest:
        """An OCI artifact (a signature, an SBOM, a chart): its config and blobs stored as they are,
        each checked against its digest and size; its blobs are not layers, so no diff_id. Referrers
        are always taken this way (a cosign signature's config lists diff_ids, but nothing runs it)."""
        config = artifact_config(self.small_blob(manifest.config))
        reports = []
        for blob in manifest.layers:
            reused = self.store.has(blob.digest) or not self._store_blob(blob, None, None)
            reports.append(LayerReport(str(blob.digest), None, blob.size, blob.media_type, reused=reused))
        self.store.index.touch_blobs([blob.digest for blob in manifest.layers] + [manifest.config.digest])
        return PulledManifest(manifest, config, reports)

    def layer(self, layer: Descriptor, diff_id: Digest) -> LayerReport:
        """Store one layer unless it is there; either way its diff_id is checked against the config,
        now or, when the store defers it, by the check that settles claims (cache/store/diffids.py)."""
        if self.store.has(layer.digest):
            try:
                return self._reused(layer, diff_id)
            except BlobsEvicted:
                pass  # evicted since the look: fetch it
        compression = compression_of(layer.media_type)
        if not self._store_blob(layer, compression, diff_id):
            return self._reused(layer, diff_id)  # another process stored it meanwhile
        return LayerReport(str(layer.digest), str(diff_id), layer.size, layer.media_type, reused=False,
                           diff_id_verified=not self._defers(compression))

    def _defers(self, compression: str | None) -> bool:
        """Whether a layer's diff_id is left as a claim: an uncompressed layer's is its digest, checked
        anyway while it streams."""
        return self.store.defer_diff_ids and compression not in (None, "none")

    def _reused(self, layer: Descriptor, diff_id: Digest) -> LayerReport:
        verified = self._check_stored_diff_id(layer, diff_id)
        return LayerReport(str(layer.digest), str(diff_id), layer.size, layer.media_type, reused=True,
                           diff_id_verified=verified)

    def _check_stored_diff_id(self, layer: Descriptor, diff_id: Digest) -> bool:
        """Check a stored layer's diff_id (hashing it here when no pair is known), or leave it as a
        claim when the store defers checks. True when the pair is verified."""
        index = self.store.index
        known = index.diff_id_of(layer.digest)
        if known == diff_id:
            return True
        pending = index.pending_diff_id(layer.digest)
        if (known is None and self._defers(compression_of(layer.media_type))
                and (pending is None or pending[0] == diff_id)  # two claims: one is false, check now
                and index.refuted_diff_id(layer.digest, diff_id) is None):
            if pending is None:
                index.record_pending_diff_id(layer.digest, diff_id, layer.media_type)
            return False
        try:
            require_diff_id(self.store, layer.digest, diff_id, layer.media_type)
        except BlobNotFound:
            raise evicted_while_pulled(layer.digest) from None
        return True

    def _read_stored(self, digest: Digest) -> bytes:
        try:
            return self.store.read_bytes(digest)
        except BlobNotFound:
            raise evicted_while_pulled(digest) from None

    def _store_blob(self, descriptor: Descriptor, compression: str | None, diff_id: Digest | None) -> bool:
        """Fetch, check and publish a blob (recording its diff_id pair when given); False when
        another process stored it first. Bytes that fail a check are dropped and the blob fetched
        once more from zero: the failure may be a bad partial (left by an earlier attempt, or
        resumed onto with Range), not the source; a second failure is the error."""
        try:
            return self._store_once(descriptor, compression, diff_id)
        except (DigestMismatch, SizeMismatch, CorruptLayer):
            return self._store_once(descriptor, compression, diff_id)

    def _store_once(self, descriptor: Descriptor, compression: str | None, diff_id: Digest | None) -> bool:
        deferred = diff_id is not None and self._defers(compression)
        with self.store.writer(descriptor.digest, descriptor.size, resume=True) as writer:
            if writer is None:
                return False
            try:
                hasher = self._transfer(descriptor, writer, None if deferred else compression)
                if diff_id is not None and not deferred:
                    _check_diff_id(descriptor, hasher.finish() if hasher else None, diff_id)
            except (DigestMismatch, SizeMismatch, CorruptLayer):
                writer.discard()  # known-bad bytes are never resumed
                raise
            writer.commit(descriptor.media_type, self.source)
            if diff_id is not None and deferred:  # after the publish: see cache/store/diffids.py
                self.store.index.record_pending_diff_id(descriptor.digest, diff_id, descriptor.media_type)
            elif diff_id is not None:
                self.store.index.record_diff_id(descriptor.digest, diff_id, descriptor.media_type)
            return True

    def _transfer(self, descriptor: Descriptor, writer: BlobWriter, compression: str | None) -> DiffIdHasher | None:
        """Stream the rest of a blob into ``writer`` (hashing the uncompressed bytes when asked).
        Bytes that fail a check are deleted; the caller decides whether to try again."""
        state: dict[str, Any] = {"hasher": None, "corrupt": None}
        bar = self.progress(f"{descriptor.digest.short}", descriptor.size)
        bar.update(writer.offset)

        def on_chunk(chunk: bytes) -> None:
            try:
                writer.write(chunk)
            except OSError as error:  # our disk, not the source: the client must not retry it
                raise _StoreWriteFailed(error) from error
            if state["hasher"] is not None and state["corrupt"] is None:
                try:
                    state["hasher"].update(chunk)
                except CorruptLayer as error:
                    state["corrupt"] = error  # reported after the digest check, which explains more
            bar.update(len(chunk))

        def on_restart() -> None:
            writer.restart()
            state["hasher"] = DiffIdHasher(compression) if compression else None
            state["corrupt"] = None

        try:
            state["hasher"] = _hash_existing(writer, compression)  # a bad partial fails here, and is dropped
            self.fetch(descriptor, writer.offset, on_chunk, on_restart)
            writer.verify()
            if state["corrupt"] is not None:
                raise state["corrupt"]
        except (DigestMismatch, SizeMismatch, CorruptLayer):
            writer.discard()  # known-bad bytes are never resumed
            raise
        except _StoreWriteFailed as failed:
            writer.discard()  # a full disk: keep no partial file eating the space that is left
            raise failed.error from None
        except OSError:
            writer.discard()  # fsync or close failed (ENOSPC shows up there too)
            raise
        finally:
            bar.close()
        return state["hasher"]  # type: ignore[no-any-return]


def _hash_existing(writer: BlobWriter, compression: str | None) -> DiffIdHasher | None:
    """A diff_id hasher fed the bytes an earlier attempt left (None when no diff_id is wanted)."""
    hasher = DiffIdHasher(compression) if compression else None
    if hasher:
        for chunk in writer.existing_chunks():
            hasher.update(chunk)
    return hasher


def _check_diff_id(layer: Descriptor, actual: Digest | None, diff_id: Digest) -> None:
    if actual != diff_id:
        raise DigestMismatch(f"layer {layer.digest} uncompresses to {actual}, but the config says {diff_id}")


def evicted_while_pulled(digest: Digest) -> BlobsEvicted:
    """A blob that was stored when looked at and is gone when read: a prune evicted it meanwhile.
    The pull dispatcher (cache/ingest/pull.py) runs such a pull once more."""
    return BlobsEvicted(f"blob {digest} was evicted while in use; pull again")
