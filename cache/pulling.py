"""Bringing one image manifest's blobs into the store from any source that can stream blobs.

The source gives a ``fetch`` function; this module does the rest, the same way for a registry and
an OCI layout: blobs already stored are reused (no byte is read from the source), new layers are
stored while their diff_id is computed in the same pass and checked against the config before
the blob becomes visible, and the verified (blob, diff_id) pair is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from cache.compression import CorruptLayer, DiffIdHasher
from cache.digest import Digest
from cache.errors import DigestMismatch, InvalidManifest, LayerhoardError, SizeMismatch
from cache.model import MAX_CONFIG_BYTES, Descriptor, ImageConfig, Manifest, compression_of, parse_config
from cache.progress import ProgressFactory, no_progress
from cache.report import LayerReport
from cache.store import BlobStore, BlobWriter

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
        if not self.store.has(descriptor.digest):
            with self.store.writer(descriptor.digest, descriptor.size, resume=True) as writer:
                if writer is not None:
                    self._transfer(descriptor, writer, None)
                    writer.commit(descriptor.media_type, self.source)
        return self.store.read_bytes(descriptor.digest)

    def pull_manifest(self, manifest: Manifest) -> PulledManifest:
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

    def layer(self, layer: Descriptor, diff_id: Digest) -> LayerReport:
        """Store one layer unless it is there; either way its diff_id is checked against the config."""
        if not self.store.has(layer.digest):
            with self.store.writer(layer.digest, layer.size, resume=True) as writer:
                if writer is not None:
                    hasher = self._transfer(layer, writer, compression_of(layer.media_type))
                    try:
                        actual = hasher.finish() if hasher else None
                        if actual != diff_id:
                            raise DigestMismatch(
                                f"layer {layer.digest} uncompresses to {actual}, but the config says {diff_id}"
                            )
                    except LayerhoardError:
                        writer.discard()
                        raise
                    writer.commit(layer.media_type, self.source)
                    self.store.index.record_diff_id(layer.digest, diff_id, layer.media_type)
                    return LayerReport(str(layer.digest), str(diff_id), layer.size, layer.media_type, reused=False)
        self._check_stored_diff_id(layer, diff_id)
        return LayerReport(str(layer.digest), str(diff_id), layer.size, layer.media_type, reused=True)

    def _check_stored_diff_id(self, layer: Descriptor, diff_id: Digest) -> None:
        known = self.store.index.diff_id_of(layer.digest)
        if known is None:  # stored before its pair was known (or the index was rebuilt): hash it here
            hasher = DiffIdHasher(compression_of(layer.media_type))
            with self.store.open(layer.digest) as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
            known = hasher.finish()
            if known == diff_id:
                self.store.index.record_diff_id(layer.digest, known, layer.media_type)
        if known != diff_id:
            raise DigestMismatch(f"layer {layer.digest} uncompresses to {known}, but the config says {diff_id}")

    def _transfer(self, descriptor: Descriptor, writer: BlobWriter, compression: str | None) -> DiffIdHasher | None:
        """Stream the rest of a blob into ``writer`` (hashing the uncompressed bytes when asked)."""
        hasher = DiffIdHasher(compression) if compression else None
        if hasher:
            for chunk in writer.existing_chunks():
                hasher.update(chunk)
        state: dict[str, Any] = {"hasher": hasher, "corrupt": None}
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
