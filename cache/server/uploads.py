"""The push side (``serve --allow-push``): blob uploads and manifest puts into the store.

Every pushed body is spooled to an ``upload-*`` file under the store's ingest/, marked in use
(:class:`InUse`: gc leaves it alone while serve runs, and the mark dies with the process), and
hashed there without any lock held: a client that stalls mid-body delays nobody else. Only the
checked, complete file is published, under the digest's lock for a moment (BlobStore.adopt).
Chunked sessions expire after ``expiry`` seconds idle (a sweeper thread removes their files), at
most ``limit`` are open at once, and no blob grows past ``max_size`` bytes (413 SIZE_INVALID: a
body that announces more is refused before it is read, a chunked one once it passes the cap).
A manifest is stored only when every blob it names is, and a tag is recorded through
the commit path (cache/ingest/commit.py), so index.json never names an incomplete image.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cache.errors import BlobNotFound, DigestMismatch, InvalidManifest, SizeMismatch
from cache.ingest.commit import Arrival, commit
from cache.model.digest import Digest, Hasher, check, sha256_of
from cache.model.manifests import Index, parse_manifest_or_index, subject_of
from cache.model.refs import pushed_image_name
from cache.server.errors import RegistryError
from cache.server.names import Repository
from cache.store.blobstore import BlobStore, disk_full
from cache.store.fsutil import InUse

DEFAULT_EXPIRY = 3600.0  # an upload idle this long (seconds) is abandoned
DEFAULT_LIMIT = 1000  # open upload sessions at once
DEFAULT_MAX_SIZE = 20 * 1024**3  # bytes one pushed blob may hold: larger than any real layer, smaller than a disk
_READ = 1 << 20


@dataclass
class Upload:
    id: str
    repo: Repository
    mark: InUse  # the session's file, marked in use for as long as the session is open
    size: int = 0
    touched: float = field(default_factory=time.monotonic)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request at a time writes

    @property
    def path(self) -> Path:
        return self.mark.path


class Uploads:
    """Upload sessions of one server process, and the spooling of every pushed blob body."""

    def __init__(self, store: BlobStore, expiry: float = DEFAULT_EXPIRY, limit: int = DEFAULT_LIMIT,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.store = store
        self.expiry = expiry
        self.limit = limit
        self.max_size = max_size
        self.counts = {"started": 0, "completed": 0, "expired": 0}  # for /metrics; under _lock
        self._sessions: dict[str, Upload] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_until_closed, name="upload-sweeper", daemon=True)
        self._sweeper.start()

    # -- sessions ------------------------------------------------------------------------------
    def start(self, repo: Repository) -> Upload:
        self.sweep()
        upload_id = uuid.uuid4().hex
        with self._lock:
            if len(self._sessions) >= self.limit:
                raise RegistryError("TOOMANYREQUESTS", f"{self.limit} uploads are open already; finish or cancel "
                                    "one, or retry later")
            upload = Upload(upload_id, repo, InUse(self.store.ingest_folder, f"upload-{upload_id}"))
            self._sessions[upload_id] = upload
        self._count("started")
        return upload

    def get(self, repo: Repository, upload_id: str) -> Upload:
        with self._lock:
            upload = self._sessions.get(upload_id)
        if upload is not None and self._expired(upload) and self._drop_if_idle(upload):
            upload = None
        if upload is None or upload.repo != repo:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "no such upload", {"uuid": upload_id[:64]})
        upload.touched = time.monotonic()
        return upload

    def append(self, upload: Upload, chunks: Iterable[bytes], start: int | None, announced: int | None = None) -> int:
        """Add a chunk; ``start`` (from Content-Range) must be where the upload stands. A chunk that
        fails half way is cut off again, so the session stays where it was. ``announced`` is the
        body's Content-Length (None when chunked)."""
        with upload.lock:
            self._check_open(upload)
            if start is not None and start != upload.size:
                raise RegistryError("RANGE_INVALID", f"chunk starts at {start}, the upload is at {upload.size}",
                                    {"size": upload.size})
            try:
                with os.fdopen(upload.mark.writable(), "r+b") as out:  # the marked file itself, not its name
                    out.seek(upload.size)
                    upload.size += write_chunks(out, self._capped(chunks, upload.size, announced))
            except BaseException:
                with contextlib.suppress(OSError, ValueError):  # ValueError: cancelled meanwhile
                    os.ftruncate(upload.mark.fd, upload.size)
                raise
            finally:
                upload.touched = time.monotonic()
            return upload.size

    def finish(self, upload: Upload, digest: Digest, chunks: Iterable[bytes], announced: int | None = None) -> None:
        """Take the last chunk and publish the whole upload under ``digest`` if it hashes to it."""
        try:
            self.append(upload, chunks, None, announced)
            with upload.lock:
                self._check_open(upload)
                hasher = _hashed(upload.mark.fd)
                os.fsync(upload.mark.fd)
                publish(self.store, upload.mark, digest, hasher, None, f"push:{upload.repo.full}")
            self._count("completed")
        finally:
            self.cancel(upload)

    def cancel(self, upload: Upload) -> None:
        with self._lock:
            self._sessions.pop(upload.id, None)
        upload.closed = True
        upload.mark.close()  # removes the file, then the in-use mark

    # -- monolithic pushes ---------------------------------------------------------------------
    def spool(self, repo: Repository, digest: Digest, chunks: Iterable[bytes], size: int | None) -> None:
        """A whole blob in one request: written and hashed under ingest/ first, published after."""
        chunks = self._capped(chunks, 0, size)
        self._count("started")
        with InUse(self.store.ingest_folder, f"upload-{uuid.uuid4().hex}") as mark:
            hasher = Hasher()
            with os.fdopen(mark.writable(), "wb") as out:
                write_chunks(out, chunks, hasher)
                out.flush()
                os.fsync(out.fileno())
            publish(self.store, mark, digest, hasher, size, f"push:{repo.full}")
        self._count("completed")

    # -- the size cap --------------------------------------------------------------------------
    def _capped(self, chunks: Iterable[bytes], already: int, announced: int | None) -> Iterator[bytes]:
        """``chunks``, refused (413) once the blob would pass ``max_size``; an announced length that
        would is refused before a byte is read."""
        if announced is not None and already + announced > self.max_size:
            raise self._too_large()
        return self._counted(chunks, already)

    def _counted(self, chunks: Iterable[bytes], already: int) -> Iterator[bytes]:
        for chunk in chunks:
            already += len(chunk)
            if already > self.max_size:
                raise self._too_large()
            yield chunk

    def _too_large(self) -> RegistryError:
        return RegistryError("SIZE_INVALID", f"a blob may hold at most {self.max_size} bytes here "
                             "(serve --max-upload-size)", {"max": self.max_size}, status=413)

    def _count(self, event: str) -> None:
        with self._lock:
            self.counts[event] += 1

    # -- expiry --------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Drop the sessions idle longer than ``expiry`` (their files go with them)."""
        with self._lock:
            stale = [upload for upload in self._sessions.values() if self._expired(upload)]
        for upload in stale:
            if self._drop_if_idle(upload):
                self._count("expired")

    def close(self) -> None:
        """Stop sweeping and drop every idle session (a session in use ends with its request)."""
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for upload in sessions:
            self._drop_if_idle(upload, expired_only=False)

    def _sweep_until_closed(self) -> None:
        interval = max(0.1, min(self.expiry / 4, 60.0))
        while not self._stop.wait(interval):
            self.sweep()

    def _expired(self, upload: Upload) -> bool:
        return time.monotonic() - upload.touched > self.expiry

    def _drop_if_idle(self, upload: Upload, expired_only: bool = True) -> bool:
        """Cancel ``upload`` unless a request is writing it now. True when dropped."""
        if not upload.lock.acquire(blocking=False):
            return False
        try:
            if expired_only and not self._expired(upload):
                return False
            self.cancel(upload)
            return True
        finally:
            upload.lock.release()

    def _check_open(self, upload: Upload) -> None:
        if upload.closed:  # expired or cancelled while this request waited for it
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "no such upload", {"uuid": upload.id})


def write_chunks(out: BinaryIO, chunks: Iterable[bytes], hasher: Hasher | None = None) -> int:
    """Write every chunk (hashing it too); returns the byte count. On a full disk the rest of the
    body is still read, so the client hears the error instead of a reset, then the error is raised."""
    written = 0
    full: OSError | None = None
    for chunk in chunks:
        if full is not None:
            continue
        try:
            out.write(chunk)
        except OSError as error:
            if not disk_full(error):
                raise
            full = error
            continue
        if hasher is not None:
            hasher.update(chunk)
        written += len(chunk)
    if full is not None:
        raise full
    return written


def _hashed(fd: int) -> Hasher:
    hasher, offset = Hasher(), 0
    while chunk := os.pread(fd, _READ, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher


def publish(store: BlobStore, mark: InUse, digest: Digest, hasher: Hasher, size: int | None, source: str) -> None:
    """Publish the complete, fsynced file of ``mark`` (hashed by ``hasher``) under ``digest`` if it
    is that blob; the digest's lock is held only for the link itself."""
    try:
        check(digest, hasher.digest, size, hasher.size, f"pushed blob {digest}")
    except (DigestMismatch, SizeMismatch) as error:
        raise RegistryError("DIGEST_INVALID", str(error)) from None
    store.adopt(mark, digest, hasher.size, hasher.blake3, None, source)


class Pushed(NamedTuple):
    digest: Digest
    subject: Digest | None  # the manifest this one refers to (OCI 1.1 ``subject``), linked in the graph


def put_manifest(store: BlobStore, repo: Repository, reference: Digest | str, raw: bytes, content_type: str) -> Pushed:
    """Store a pushed manifest or index; a tag reference also names it in index.json. A manifest
    with a ``subject`` is linked to it as a referrer (the subject may arrive later: the spec allows it)."""
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
    # a push by digest names nothing (a Digest is a str too); a tag names the image push:<ref>
    names = [] if isinstance(reference, Digest) else [pushed_image_name(f"{repo.full}:{reference}")]
    try:
        commit(store, Arrival(f"push:{repo.full}", parsed), names)
    except BlobNotFound as error:  # an index whose children's blobs are not all stored
        raise RegistryError("MANIFEST_BLOB_UNKNOWN", str(error)) from None
    subject = subject_of(raw)
    return Pushed(digest, subject[0] if subject else None)
