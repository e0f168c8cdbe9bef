"""BlobStore: the content-addressed store on disk, which is itself an OCI image layout.

    oci-layout            {"imageLayoutVersion": "1.0.0"}
    index.json            every cached image, named by org.opencontainers.image.ref.name
    blobs/sha256/<hex>    exactly the bytes the name says; read-only
    ingest/               partial writes, never read as blobs
    locks/                one flock file per digest being written
    meta/                 the metadata index (diskcache)
    corrupt/              blobs that verify found damaged, kept for inspection

How a blob is published (containerd's commit is the model): stream into ingest/ while hashing,
fsync, check size and sha256, chmod read-only, hard-link into blobs/ (an existing target is
success), unlink the ingest file, fsync blobs/. A reader never takes a lock: a name in blobs/
appears only once its content is complete and checked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cache.digest import CHUNK, Digest, Hasher, check, hash_file, iter_chunks, parse_digest, sha256_of
from cache.errors import BlobNotFound, LayerhoardError, SizeMismatch
from cache.fsutil import InUse, file_lock, fsync_dir, write_atomic
from cache.index import MetadataIndex
from cache.shared import make_dirs, share_meta

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def default_cache_dir() -> Path:
    """``$LAYERHOARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/layerhoard``, else ``~/.cache/layerhoard``."""
    explicit = os.environ.get("LAYERHOARD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "layerhoard"


class DiskFull(LayerhoardError):
    """The cache's file system filled up during a write; the partial write was removed."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            f"no space left on the device of the cache {root}; nothing partial was kept: "
            "free space (`layerhoard prune`, a bigger disk) and run again"
        )


def disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT from a write, or SQLite's "database or disk is full"."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


class CorruptBlob(NamedTuple):
    digest: Digest
    reason: str
    moved_to: Path


def _frozen(chunk: bytes | memoryview) -> bytes | memoryview:
    """``chunk``, or a copy when its caller could change it after write() returned."""
    if isinstance(chunk, bytes) or (isinstance(chunk, memoryview) and isinstance(chunk.obj, bytes)):
        return chunk
    return bytes(chunk)


class _WriteBehind:
    """The blake3 half of the hashing and the file writes, on a second thread.

    The caller's thread hashes sha256 meanwhile. hashlib, blake3 and write() all release the GIL on
    large buffers, so an ingest costs about the slower of sha256 and the disk instead of the sum of
    sha256, blake3 and the write (bench/ingest.py measures it). The thread starts with the first
    chunk: a writer that writes nothing starts none.
    """

    DEPTH = 8  # chunks in flight: bounds the memory one writer holds
    WRITEBACK = 32 << 20  # start the kernel's writeback every 32 MiB, so that fsync finds little left

    def __init__(self, file: BinaryIO, hasher: Hasher) -> None:
        self._file, self._hasher = file, hasher
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(self.DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._written = self._started = file.tell()

    def put(self, chunk: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="blob-write-behind", daemon=True)
            self._thread.start()
        self._queue.put(_frozen(chunk))

    def finish(self, *, raise_error: bool = True) -> None:
        """Wait until every chunk is hashed and written; raise what the thread met."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None and raise_error:
            raise self._error

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the caller never blocks on a full queue
            try:
                self._hasher.update_blake3(chunk)
                self._file.write(chunk)
                self._written += len(chunk)
                if self._written - self._started >= self.WRITEBACK:
                    self._start_writeback()
            except BaseException as error:
                self._error = error

    def _start_writeback(self) -> None:
        # FADV_DONTNEED starts writing dirty pages back now instead of at fsync (or at the
        # dirty_background threshold, often GBs away), so the disk works while we hash.
        self._file.flush()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._file.fileno(), self._started, self._written - self._started,
                             os.POSIX_FADV_DONTNEED)
        self._started = self._written


class BlobWriter:
    """Bytes on their way into the store under one digest. Made by :meth:`BlobStore.writer`.

    ``offset`` is how many bytes an earlier, interrupted attempt left in ingest/ (already hashed
    again), so a caller that can resume asks its source for the rest only.
    """

    def __init__(self, store: BlobStore, digest: Digest, size: int | None, resume: bool) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.path = store.ingest_dir / f"sha256-{digest.hex}"
        self._hasher = Hasher()
        resuming = resume and self.path.exists()
        if resuming:
            try:
                os.chmod(self.path, 0o644)  # a writer killed inside _publish leaves it read-only
            except PermissionError:  # another user's leftover in a shared cache: start over
                resuming = False
        if not resuming:
            self.path.unlink(missing_ok=True)  # "w+b" cannot open a read-only leftover unless root
        mode = "r+b" if resuming else "w+b"
        self._file: BinaryIO = open(self.path, mode)  # type: ignore[assignment]  # noqa: SIM115
        if mode == "r+b":
            while chunk := self._file.read(4 * CHUNK):
                self._hasher.update(chunk)
            if size is not None and self._hasher.size > size:
                self._file.seek(0)
                self._file.truncate()
                self._hasher = Hasher()
        self._behind = _WriteBehind(self._file, self._hasher)
        self.committed = False

    @property
    def offset(self) -> int:
        return self._hasher.size

    def restart(self) -> None:
        """Drop what was written so far (the source could not resume)."""
        self._behind.finish()
        self._file.seek(0)
        self._file.truncate()
        self._hasher = Hasher()
        self._behind = _WriteBehind(self._file, self._hasher)

    def write(self, chunk: bytes | memoryview) -> None:
        if self.size is not None and self._hasher.size + len(chunk) > self.size:
            raise SizeMismatch(f"blob {self.digest}: more than the expected {self.size} bytes")
        self._hasher.update_sha256(chunk)
        self._behind.put(chunk)

    def existing_chunks(self) -> Iterator[bytes]:
        """The bytes an earlier attempt left (the first ``offset`` bytes), for callers that hash too."""
        self._behind.finish()  # every byte counted in offset is in the file
        with open(self.path, "rb") as handle:
            remaining = self.offset
            while remaining > 0 and (chunk := handle.read(min(4 * CHUNK, remaining))):
                remaining -= len(chunk)
                yield chunk

    def verify(self) -> None:
        """Flush to disk and check size and sha256; on a mismatch the partial data is deleted."""
        if not self._file.closed:
            self._behind.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        try:
            check(self.digest, self._hasher.digest, self.size, self._hasher.size, f"blob {self.digest}")
        except LayerhoardError:
            self.discard()  # bad bytes must not be resumed (containerd#3974)
            raise

    def discard(self) -> None:
        """Drop the partial data: it is known bad, or its source cannot resume."""
        self.close()
        self.path.unlink(missing_ok=True)

    def commit(self, media_type: str | None = None, source: str | None = None) -> None:
        """Check and publish; on a mismatch the partial data is deleted and the error raised."""
        self.verify()
        self.store._publish(self.path, self.digest)
        self.store.index.record_blob(self.digest, self._hasher.size, self._hasher.blake3, media_type, source)
        self.committed = True

    def close(self) -> None:
        """Release the file; the partial data stays in ingest/ for a resume (gc removes it later)."""
        if not self._file.closed:
            self._behind.finish(raise_error=False)
            self._file.close()


class BlobStore:
    """One cache folder. Cheap to open; safe for many processes and threads at once."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        self.locks_dir = self.root / "locks"
        self.corrupt_dir = self.root / "corrupt"
        self.index_path = self.root / "index.json"
        self._index: MetadataIndex | None = None
        self._init_layout()

    # -- layout --------------------------------------------------------------------------------
    def _init_layout(self) -> None:
        try:
            for folder in (self.blobs_dir, self.ingest_dir, self.locks_dir):
                make_dirs(folder, self.root)  # group-writable in a shared (setgid) cache folder
        except OSError as error:
            raise LayerhoardError(f"cannot create cache folder {self.root}: {error.strerror}") from error
        layout = self.root / "oci-layout"
        if not layout.exists():
            write_atomic(layout, json.dumps(LAYOUT_VERSION).encode())
        if not self.index_path.exists():
            with file_lock(self.locks_dir / "index.json.lock"):
                if not self.index_path.exists():
                    self._write_index_json([])

    @property
    def index(self) -> MetadataIndex:
        if self._index is None:
            make_dirs(self.root / "meta", self.root)
            try:
                self._index = MetadataIndex(self.root / "meta", self.locks_dir / "meta.lock")
            except sqlite3.DatabaseError as error:  # never a traceback: the index is rebuildable
                raise LayerhoardError(
                    f"the metadata index {self.root / 'meta'} is damaged ({error}); "
                    "run `layerhoard gc --rebuild-index`"
                ) from None
            share_meta(self.root / "meta", self.root)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # -- reading (no locks) --------------------------------------------------------------------
    def path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the cache") from None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the cache") from None

    def read_bytes(self, digest: Digest) -> bytes:
        """A small blob (manifest, config) in memory."""
        with self.open(digest) as handle:
            return handle.read()

    def digests(self) -> Iterator[Digest]:
        for entry in os.scandir(self.blobs_dir):
            try:
                yield parse_digest(f"sha256:{entry.name}")
            except LayerhoardError:
                continue  # not ours: ignore rather than serve it

    # -- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, digest: Digest) -> Iterator[None]:
        """The cross-process lock of one digest: one transfer per digest (invariant 3)."""
        with file_lock(self.locks_dir / f"sha256-{digest.hex}.lock"):
            yield

    @contextlib.contextmanager
    def writer(self, digest: Digest, size: int | None = None, *, resume: bool = False) -> Iterator[BlobWriter | None]:
        """Lock ``digest`` and yield a writer, or None when the blob is (now) stored.

        The second look after the lock is what makes a waiting process reuse the blob that the
        first one fetched instead of fetching it again.
        """
        with self.lock(digest):
            if self.has(digest):
                yield None
                return
            writer = BlobWriter(self, digest, size, resume)
            try:
                yield writer
            except BaseException:
                writer.close()
                raise
            writer.close()

    def ingest(
        self,
        digest: Digest,
        stream: BinaryIO | Iterable[bytes],
        size: int | None = None,
        media_type: str | None = None,
        source: str | None = None,
    ) -> bool:
        """Store the bytes of ``stream`` under ``digest``. True when written now, False when already there.

        A wrong digest or size raises and leaves nothing in blobs/.
        """
        with self.writer(digest, size) as writer:
            if writer is None:
                return False
            try:
                for chunk in iter_chunks(stream):
                    writer.write(chunk)
            except BaseException:
                writer.discard()  # a plain stream cannot resume: drop it
                raise
            writer.commit(media_type, source)
            return True

    def put_bytes(self, data: bytes, media_type: str | None = None, source: str | None = None) -> Digest:
        """Store small bytes (a manifest, a config) under their own digest."""
        digest = sha256_of(data)
        self.ingest(digest, [data], len(data), media_type, source)
        return digest

    def ingest_unknown(
        self, stream: BinaryIO | Iterable[bytes], media_type: str | None = None, source: str | None = None
    ) -> tuple[Digest, int, bool]:
        """Store bytes whose digest is known only once they are written (for example our own zstd).

        Returns (digest, size, written_now).
        """
        hasher = Hasher()
        with InUse(self.ingest_dir / f"tmp-{uuid.uuid4().hex}") as temp:  # gc leaves it alone until adopted
            with open(temp.path, "wb") as handle:
                for chunk in iter_chunks(stream):
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            written = self.adopt(temp.path, hasher.digest, hasher.size, hasher.blake3, media_type, source)
            return hasher.digest, hasher.size, written

    def adopt(
        self, path: Path, digest: Digest, size: int, blake3: str, media_type: str | None, source: str | None
    ) -> bool:
        """Publish a complete, fsynced file under ``ingest/`` that the caller hashed while writing
        it (``digest``, ``blake3``). True when published now, False when the blob was already there."""
        with self.lock(digest):
            if self.has(digest):
                return False
            self._publish(path, digest)
            self.index.record_blob(digest, size, blake3, media_type, source)
            return True

    def _publish(self, ingest_path: Path, digest: Digest) -> None:
        """Make checked bytes visible under their digest. Caller holds the digest's lock."""
        os.chmod(ingest_path, 0o444)
        try:
            os.link(ingest_path, self.path(digest))
        except FileExistsError:
            pass  # someone published the same bytes first: that is success
        ingest_path.unlink(missing_ok=True)
        fsync_dir(self.blobs_dir)

    def delete(self, digest: Digest, *, wait: bool = True) -> bool:
        """Remove a blob (prune, gc). Takes the digest's lock so no write of it is in progress;
        with ``wait=False`` a blob whose lock is held (a write in progress) is left alone."""
        with file_lock(self.locks_dir / f"sha256-{digest.hex}.lock", blocking=wait) as held:
            if not held:
                return False
            try:
                self.path(digest).unlink()
            except FileNotFoundError:
                return False
        self.index.drop_blob(digest)
        return True

    # -- index.json ----------------------------------------------------------------------------
    def images(self) -> list[dict[str, object]]:
        """The descriptors of index.json, each with its ref name annotation."""
        try:
            data = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as error:
            raise LayerhoardError(f"{self.index_path} is not valid JSON: {error}") from error
        manifests = data.get("manifests", []) if isinstance(data, dict) else []
        return [entry for entry in manifests if isinstance(entry, dict)]

    def image_descriptor(self, ref: str) -> dict[str, object] | None:
        for entry in self.images():
            if ref_name_of(entry) == ref:
                return entry
        return None

    def set_image(
        self, ref: str, descriptor: dict[str, object], check: Callable[[], None] | None = None
    ) -> None:
        """Point ``ref`` at a manifest descriptor in index.json (replaced atomically, under a lock).

        ``check`` runs under the same lock first (record_image: "every blob is stored"); prune and
        gc sweep under that lock too, so no image is named while its blobs are being deleted.
        """
        entry = dict(descriptor)
        entry["annotations"] = {**dict(descriptor.get("annotations") or {}), REF_NAME: ref}  # type: ignore[call-overload]
        with self.index_json_lock():
            if check is not None:
                check()
            current = self.images()
            if entry in current:
                return  # already named so: a cached pull rewrites (and fsyncs) nothing
            entries = [e for e in current if ref_name_of(e) != ref]
            entries.append(entry)
            entries.sort(key=lambda e: ref_name_of(e) or "")
            self._write_index_json(entries)

    def remove_image(self, ref: str) -> bool:
        with file_lock(self.locks_dir / "index.json.lock"):
            entries = self.images()
            kept = [e for e in entries if ref_name_of(e) != ref]
            if len(kept) == len(entries):
                return False
            self._write_index_json(kept)
            return True

    def index_json_lock(self) -> contextlib.AbstractContextManager[bool]:
        """The lock every change of index.json holds (not reentrant)."""
        return file_lock(self.locks_dir / "index.json.lock")

    def replace_images(self, entries: list[dict[str, object]]) -> None:
        """Write index.json with exactly ``entries``; the caller holds :meth:`index_json_lock`."""
        self._write_index_json(entries)

    def _write_index_json(self, entries: list[dict[str, object]]) -> None:
        document = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}
        write_atomic(self.index_path, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")

    # -- verify --------------------------------------------------------------------------------
    def verify(self, *, full: bool = False, repair: bool = False) -> tuple[int, list[CorruptBlob]]:
        """Re-hash every blob; move damaged ones to corrupt/ so they are never served.

        ``full`` checks sha256 against the name; otherwise blake3 against the record made at ingest
        (sha256 where no record exists). ``repair`` also forgets the blob in the index so the next
        pull fetches it again. Returns (blobs checked, corrupt blobs).
        """
        checked = 0
        corrupt: list[CorruptBlob] = []
        for digest in list(self.digests()):
            path = self.path(digest)
            record = self.index.blob(digest)
            reason = None
            try:
                if full or record is None or not record.get("blake3"):
                    actual = parse_digest(f"sha256:{hash_file(str(path))}")
                    if actual != digest:
                        reason = f"sha256 is {actual}"
                else:
                    actual_b3 = hash_file(str(path), use_blake3=True)
                    if actual_b3 != record["blake3"]:
                        reason = f"blake3 is {actual_b3}, recorded {record['blake3']}"
            except FileNotFoundError:
                continue  # deleted by prune while we looked
            checked += 1
            if reason is None:
                continue
            corrupt.append(CorruptBlob(digest, reason, self._quarantine(digest)))
            if repair:
                self.index.drop_blob(digest)
        return checked, corrupt

    def _quarantine(self, digest: Digest) -> Path:
        make_dirs(self.corrupt_dir, self.root)
        target = self.corrupt_dir / f"sha256-{digest.hex}-{int(time.time())}"
        with self.lock(digest):
            shutil.move(str(self.path(digest)), target)
        fsync_dir(self.blobs_dir)
        return target


def ref_name_of(entry: dict[str, object]) -> str | None:
    annotations = entry.get("annotations")
    if isinstance(annotations, dict):
        name = annotations.get(REF_NAME)
        return name if isinstance(name, str) else None
    return None
