"""The push side (``serve --allow-push``): blob uploads and manifest puts into the store.

An upload is a file under the store's ingest/ (gc removes abandoned ones); nothing reaches blobs/
until the closing PUT names a digest and the bytes hash to it (BlobStore.ingest verifies). A
manifest is stored only when every blob it names is, and a tag is recorded through
cache.images.record_image, so index.json never names an incomplete image.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cache.digest import Digest, sha256_of
from cache.errors import BlobNotFound, DigestMismatch, InvalidManifest, SizeMismatch
from cache.images import record_image
from cache.model import Index, parse_manifest_or_index
from cache.server.errors import RegistryError
from cache.server.names import Repository
from cache.store import BlobStore


@dataclass
class Upload:
    id: str
    repo: Repository
    path: Path
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Uploads:
    """Upload sessions of one server process."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._sessions: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def start(self, repo: Repository) -> Upload:
        upload_id = uuid.uuid4().hex
        upload = Upload(upload_id, repo, self.store.ingest_dir / f"upload-{upload_id}")
        upload.path.touch()
        with self._lock:
            self._sessions[upload_id] = upload
        return upload

    def get(self, repo: Repository, upload_id: str) -> Upload:
        with self._lock:
            upload = self._sessions.get(upload_id)
        if upload is None or upload.repo != repo:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "no such upload", {"uuid": upload_id[:64]})
        return upload

    def append(self, upload: Upload, chunks: Iterable[bytes], start: int | None) -> int:
        """Add a chunk; ``start`` (from Content-Range) must be where the upload stands."""
        with upload.lock:
            if start is not None and start != upload.size:
                raise RegistryError("RANGE_INVALID", f"chunk starts at {start}, the upload is at {upload.size}",
                                    {"size": upload.size})
            with open(upload.path, "ab") as out:
                for chunk in chunks:
                    out.write(chunk)
                    upload.size += len(chunk)
            return upload.size

    def finish(self, upload: Upload, digest: Digest, chunks: Iterable[bytes]) -> None:
        """Take the last chunk and publish the whole upload under ``digest`` if it hashes to it."""
        try:
            self.append(upload, chunks, None)
            with open(upload.path, "rb") as data:
                self.store.ingest(digest, data, upload.size, source=f"push:{upload.repo.full}")
        except (DigestMismatch, SizeMismatch) as error:
            raise RegistryError("DIGEST_INVALID", str(error)) from None
        finally:
            self.cancel(upload)

    def cancel(self, upload: Upload) -> None:
        with self._lock:
            self._sessions.pop(upload.id, None)
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()


def put_manifest(store: BlobStore, repo: Repository, reference: Digest | str, raw: bytes, content_type: str) -> Digest:
    """Store a pushed manifest or index; a tag reference also names it in index.json."""
    try:
        parsed = parse_manifest_or_index(raw, content_type, what="pushed manifest")
    except InvalidManifest as error:
        raise RegistryError("MANIFEST_INVALID", str(error)) from None
    digest = sha256_of(raw)
    if isinstance(reference, Digest) and reference != digest:
        raise RegistryError("DIGEST_INVALID", f"manifest content has digest {digest}, pushed as {reference}")
    named = [d.digest for d in parsed.manifests] if isinstance(parsed, Index) \
        else [parsed.config.digest, *(layer.digest for layer in parsed.layers)]
    missing = [str(d) for d in named if not store.has(d)]
    if missing:
        raise RegistryError("MANIFEST_BLOB_UNKNOWN", f"{len(missing)} referenced blob(s) are not stored",
                            {"digests": missing[:20]})
    store.put_bytes(raw, parsed.media_type, source=f"push:{repo.full}")
    if isinstance(reference, str):
        try:
            record_image(store, f"{repo.full}:{reference}", parsed, platform=None, source=f"push:{repo.full}")
        except BlobNotFound as error:  # an index whose children's blobs are not all stored
            raise RegistryError("MANIFEST_BLOB_UNKNOWN", str(error)) from None
    return digest
