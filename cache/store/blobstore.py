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

import bisect
import contextlib
import errno
import json
import os
import queue
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from cache.errors import BlobNotFound, LayerhoardError, SizeMismatch
from cache.formats.index_json import REF_NAME, IndexEntry, NameFile, ref_name_of, typed_entries
from cache.model.digest import CHUNK, Digest, Hasher, check, hash_fd, iter_chunks, parse_digest, sha256_of
from cache.store.folder import Folder, UnsafeFile
from cache.store.fsutil import InUse, write_atomic
from cache.store.metadata import DBNAME, MetadataIndex
from cache.store.shared import make_dirs, share_meta, shared_mode

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
PUBLISHED_MODE = 0o444  # read-only for everyone: every blob we publish has this mode


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
    again), so a caller that can resume asks its source for the rest only. The ingest file is
    reached only through its descriptor once opened: it is published by linking that descriptor.
    """

    def __init__(self, store: BlobStore, digest: Digest, size: int | None, resume: bool) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.name = f"sha256-{digest.hex}"
        self.path = store.ingest_folder.path / self.name  # for messages
        self._hasher = Hasher()
        fd = _open_partial(store.ingest_folder, self.name) if resume else None
        resuming = fd is not None
        if fd is None:
            fd = store.ingest_folder.create(self.name)
        self._file: BinaryIO = os.fdopen(fd, "r+b")
        if resuming:
            while chunk := self._file.read(4 * CHUNK):
                self._hasher.update(chunk)
            if size is not None and self._hasher.size > size:
                self._file.seek(0)
                self._file.truncate()
                self._hasher = Hasher()
        self._behind = _WriteBehind(self._file, self._hasher)
        self._synced = False
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
        self._file.flush()
        fd, position = self._file.fileno(), 0
        while position < self.offset and (chunk := os.pread(fd, min(4 * CHUNK, self.offset - position), position)):
            position += len(chunk)
            yield chunk

    def verify(self) -> None:
        """Flush to disk and check size and sha256; on a mismatch the partial data is deleted."""
        if not self._synced:
            self._behind.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._synced = True
        try:
            check(self.digest, self._hasher.digest, self.size, self._hasher.size, f"blob {self.digest}")
        except LayerhoardError:
            self.discard()  # bad bytes must not be resumed (containerd#3974)
            raise

    def discard(self) -> None:
        """Drop the partial data: it is known bad, or its source cannot resume."""
        if not self._file.closed:
            self.store.ingest_folder.remove_if_same(self.name, self._file.fileno())
        self.close()

    def commit(self, media_type: str | None = None, source: str | None = None) -> None:
        """Check and publish; on a mismatch the partial data is deleted and the error raised."""
        self.verify()
        self.store._publish(self._file.fileno(), self.digest, self.name)
        self.close()
        self.store.index.record_blob(self.digest, self._hasher.size, self._hasher.blake3, media_type, source)
        self.committed = True

    def close(self) -> None:
        """Release the file; the partial data stays in ingest/ for a resume (gc removes it later)."""
        if not self._file.closed:
            self._behind.finish(raise_error=False)
            self._file.close()


def _open_partial(ingest: Folder, name: str) -> int | None:
    """A read-write descriptor of what an interrupted write of ours left under ``name``, or None to
    start over. Only our own plain file is resumed: another member's leftover (which we may not
    write), a link, a FIFO or a file with a second name elsewhere is replaced, never written to."""
    try:
        fd = ingest.open(name)  # read-only first: a writer killed inside _publish left it 0444
    except FileNotFoundError:
        return None
    except UnsafeFile:
        ingest.remove(name)
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_nlink != 1:
            return None
        os.fchmod(fd, 0o644)
        return ingest.reopen(fd, name, os.O_RDWR)
    finally:
        os.close(fd)


class DeferredNames:
    """Names queued by :meth:`BlobStore.deferred_names`, written to index.json in one go."""

    MOST = 500  # names in one write
    LONGEST = 5.0  # seconds a name may wait

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.failed: dict[str, str] = {}  # ref -> why it was not named
        self._queue: dict[str, tuple[dict[str, object], Callable[[], None] | None]] = {}
        self._since = 0.0

    def add(self, ref: str, entry: dict[str, object], check: Callable[[], None] | None) -> None:
        if not self._queue:
            self._since = time.monotonic()
        self._queue[ref] = (entry, check)
        if len(self._queue) >= self.MOST or time.monotonic() - self._since >= self.LONGEST:
            self.flush()

    def flush(self) -> None:
        if not self._queue:
            return
        queue, self._queue = self._queue, {}
        store = self.store
        with store.index_json_lock():
            named = {ref_name_of(e) or "": e for e in store.images()}
            for ref, (entry, check) in queue.items():
                try:
                    if check is not None:
                        check()
                except LayerhoardError as error:
                    self.failed[ref] = str(error)
                    continue
                named[ref] = entry
            entries = [named[ref] for ref in sorted(named)]
            if entries != store.images():  # cached pulls of named images change nothing
                store.names.write(entries)


class UnsafeBlob(BlobNotFound):
    """A name in blobs/ that is not a blob we published (a link, a FIFO, a writable or private
    file): treated as absent, never read or served; verify moves it aside."""


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
        self._deferred: DeferredNames | None = None
        # Pulls record a layer's diff_id as a claim, checked after the command (cache/store/diffids.py);
        # the command line sets it because it starts that check once it has printed its result.
        self.defer_diff_ids = False
        self._init_layout()

    # -- layout --------------------------------------------------------------------------------
    def _init_layout(self) -> None:
        try:
            make_dirs(self.root, self.root)
            mode = shared_mode(self.root)  # group-writable folders in a shared (setgid) cache folder
            self.root_folder = Folder.at(self.root)
            self.blobs_folder = self.root_folder.child("blobs", "sha256", mode=mode)
            self.ingest_folder = self.root_folder.child("ingest", mode=mode)
            self.locks_folder = self.root_folder.child("locks", mode=mode)
        except OSError as error:
            raise LayerhoardError(f"cannot create cache folder {self.root}: {error.strerror}") from error
        if self.root_folder.lstat("oci-layout") is None:
            write_atomic(self.root / "oci-layout", json.dumps(LAYOUT_VERSION).encode())
        self.names = NameFile(self.root_folder)
        if not self.names.exists():
            with self.index_json_lock():
                if not self.names.exists():
                    self.names.write([])

    @property
    def index(self) -> MetadataIndex:
        if self._index is None:
            meta = self.root_folder.child("meta", mode=shared_mode(self.root))
            try:
                self._index = MetadataIndex(self.root / "meta", self.locks_dir / "meta.lock",
                                            before_open=lambda: _check_meta_files(meta, self))
            except sqlite3.DatabaseError as error:  # never a traceback: the index is rebuildable
                raise LayerhoardError(
                    f"the metadata index {self.root / 'meta'} is damaged ({error}); "
                    "run `layerhoard gc --rebuild-index`"
                ) from None
            finally:
                meta.close()
            share_meta(self.root / "meta", self.root)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # -- reading (no locks) --------------------------------------------------------------------
    def path(self, digest: Digest) -> Path:
        """Where the blob lives, for messages and for tools outside; the store reads through :meth:`open`."""
        return self.blobs_dir / digest.hex

    def has(self, digest: Digest) -> bool:
        return _published(self.blobs_folder.lstat(digest.hex))

    def stat(self, digest: Digest) -> os.stat_result:
        """The blob's file itself (a link is not followed); BlobNotFound when it is not a stored blob."""
        info = self.blobs_folder.lstat(digest.hex)
        if info is None or not _published(info):
            raise BlobNotFound(f"blob {digest} is not in the cache")
        return info

    def size(self, digest: Digest) -> int:
        return self.stat(digest).st_size

    def open(self, digest: Digest) -> BinaryIO:
        """The blob's bytes. Only a plain, world-readable file of the cache is read: a link, a FIFO or
        a private file put under a blob's name in a shared cache raises :class:`UnsafeBlob`."""
        return os.fdopen(self._open_fd(digest)[0], "rb")

    def _open_fd(self, digest: Digest) -> tuple[int, os.stat_result]:
        try:
            fd, info = self.blobs_folder.open_stat(digest.hex)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the cache") from None
        except UnsafeFile as error:
            raise UnsafeBlob(f"blob {digest} refused: {error}; run `layerhoard verify --repair`") from None
        if not _published(info):
            os.close(fd)
            raise UnsafeBlob(f"blob {digest} refused: {self.path(digest)} is not readable by everyone, so it is "
                             "not a blob layerhoard published; run `layerhoard verify --repair`")
        return fd, info

    def read_bytes(self, digest: Digest) -> bytes:
        """A small blob (manifest, config) in memory."""
        with self.open(digest) as handle:
            return handle.read()

    def digests(self) -> Iterator[Digest]:
        for entry in self.blobs_folder.names():
            try:
                yield parse_digest(f"sha256:{entry.name}")
            except LayerhoardError:
                continue  # not ours: ignore rather than serve it

    # -- writing -------------------------------------------------------------------------------
    def lock(self, digest: Digest, *, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        """The cross-process lock of one digest: one transfer per digest (invariant 3)."""
        return self.locks_folder.lock(f"sha256-{digest.hex}.lock", blocking=blocking)

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
        with InUse(self.ingest_folder, f"tmp-{uuid.uuid4().hex}") as temp:  # gc leaves it alone until adopted
            with os.fdopen(temp.writable(), "wb") as handle:
                for chunk in iter_chunks(stream):
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            written = self.adopt(temp, hasher.digest, hasher.size, hasher.blake3, media_type, source)
            return hasher.digest, hasher.size, written

    def adopt(
        self, temp: InUse, digest: Digest, size: int, blake3: str, media_type: str | None, source: str | None
    ) -> bool:
        """Publish a complete, fsynced file in ``ingest/`` that the caller made as ``temp`` and hashed
        while writing it (``digest``, ``blake3``). True when published now, False when already there."""
        with self.lock(digest):
            if self.has(digest):
                return False
            self._publish(temp.fd, digest, temp.name)
            self.index.record_blob(digest, size, blake3, media_type, source)
            return True

    def adopt_link(
        self, fd: int, digest: Digest, size: int, blake3: str, media_type: str | None, source: str | None
    ) -> bool:
        """Publish by a hard link a read-only file of another content store (containerd's) that the
        caller opened and hashed (``digest``, ``blake3``): the inode verified is the inode named.
        True when linked now, False when already stored; OSError (EXDEV) on another file system,
        where the caller copies instead. The file's mode is left alone: it is not ours."""
        if os.fstat(fd).st_mode & 0o222:
            raise OSError(errno.EPERM, "a writable file is not linked: it could change under its name")
        with self.lock(digest):
            if self.has(digest):
                return False
            try:
                self.blobs_folder.link(fd, digest.hex)
            except FileExistsError:  # a link or special file planted under the blob's name: replace it
                self.blobs_folder.remove(digest.hex)
                self.blobs_folder.link(fd, digest.hex)
            self.blobs_folder.fsync()
            self.index.record_blob(digest, size, blake3, media_type, source)
            return True

    def _publish(self, fd: int, digest: Digest, ingest_name: str) -> None:
        """Make the checked bytes of the ingest file open as ``fd`` visible under their digest.
        Caller holds the digest's lock. The descriptor, not the name, is linked: whatever a member
        put under the ingest name meanwhile is never published."""
        os.fchmod(fd, 0o444)
        try:
            self.blobs_folder.link(fd, digest.hex, (self.ingest_folder, ingest_name))
        except FileExistsError:
            if not self.has(digest):  # a link or special file planted under the blob's name: replace it
                self.blobs_folder.remove(digest.hex)
                self.blobs_folder.link(fd, digest.hex, (self.ingest_folder, ingest_name))
            # else someone published the same bytes first: that is success
        self.ingest_folder.remove_if_same(ingest_name, fd)
        self.blobs_folder.fsync()

    def delete(self, digest: Digest, *, wait: bool = True) -> bool:
        """Remove a blob (prune, gc). Takes the digest's lock so no write of it is in progress;
        with ``wait=False`` a blob whose lock is held (a write in progress) is left alone."""
        with self.lock(digest, blocking=wait) as held:
            if not held or not self.blobs_folder.remove(digest.hex):
                return False
        self.index.drop_blob(digest)
        return True

    # -- index.json ----------------------------------------------------------------------------
    def images(self) -> list[dict[str, object]]:
        """The descriptors of index.json, each with its ref name annotation."""
        return self.names.entries()

    def index_entries(self) -> list[IndexEntry]:
        """index.json's entries, typed: name, digest, media type, size (see cache/formats/index_json.py)."""
        return typed_entries(self.names.entries())

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
        if self._deferred is not None:
            self._deferred.add(ref, entry, check)
            return
        with self.index_json_lock():
            if check is not None:
                check()
            self._name(ref, entry)

    def _name(self, ref: str, entry: dict[str, object]) -> bool:
        """Point ``ref`` at ``entry`` in index.json; the caller holds its lock. False when it did."""
        current = self.images()
        if entry in current:
            return False  # already named so: a cached pull rewrites (and fsyncs) nothing
        entries = [e for e in current if ref_name_of(e) != ref]
        refs = [ref_name_of(e) or "" for e in entries]
        entries.insert(bisect.bisect(refs, ref), entry)  # kept sorted by name
        self.names.write(entries)
        return True

    @contextlib.contextmanager
    def deferred_names(self) -> Iterator[DeferredNames]:
        """Name images in index.json in batches instead of one write per image (warm of many images).

        index.json is replaced whole, and its fsync grows with it: one more image in a cache of
        10,000 cost 18 ms against 2.5 ms in an empty one. Inside this block :meth:`set_image` queues
        the name; the queue is written (each image's completeness checked again under the lock) when
        it holds ``DeferredNames.MOST`` names or is ``DeferredNames.LONGEST`` seconds old, and at the
        end. A process killed meanwhile loses only those names: their blobs are stored, so pulling
        them again costs a manifest request each. Names whose check fails at the write are left
        out and listed in ``failed`` (their blobs were evicted meanwhile: pull them again).
        """
        deferred = DeferredNames(self)
        self._deferred = deferred
        try:
            yield deferred
        finally:
            self._deferred = None
            deferred.flush()

    def remove_image(self, ref: str) -> bool:
        with self.index_json_lock():
            entries = self.images()
            kept = [e for e in entries if ref_name_of(e) != ref]
            if len(kept) == len(entries):
                return False
            self.names.write(kept)
            return True

    def index_json_lock(self) -> contextlib.AbstractContextManager[bool]:
        """The lock every change of index.json holds (not reentrant)."""
        return self.locks_folder.lock("index.json.lock")

    def replace_images(self, entries: list[dict[str, object]]) -> None:
        """Write index.json with exactly ``entries``; the caller holds :meth:`index_json_lock`."""
        self.names.write(entries)

    # -- verify --------------------------------------------------------------------------------
    def verify(self, *, full: bool = False, repair: bool = False) -> tuple[int, list[CorruptBlob]]:
        """Re-hash every blob; move damaged ones to corrupt/ so they are never served.

        ``full`` checks sha256 against the name; otherwise blake3 against the record made at ingest
        (sha256 where no record exists). A name that is not a blob we published (a link, a FIFO, a
        file not readable by everyone) is damage too. ``repair`` also forgets the blob in the index so the next
        pull fetches it again. Returns (blobs checked, corrupt blobs).
        """
        checked = 0
        corrupt: list[CorruptBlob] = []
        recorded = {} if full else self.index.blake3_of_blobs()  # one query, not one per blob
        for digest in list(self.digests()):
            try:
                reason = self._damage(digest, recorded.get(str(digest)))
            except BlobNotFound as error:
                if not isinstance(error, UnsafeBlob):
                    continue  # deleted by prune while we looked
                reason = str(error)
            checked += 1
            if reason is None:
                continue
            corrupt.append(CorruptBlob(digest, reason, self._quarantine(digest)))
            if repair:
                self.index.drop_blob(digest)
        return checked, corrupt

    def _damage(self, digest: Digest, blake3: str | None) -> str | None:
        """What is wrong with a blob's bytes: sha256 checked against the name, or blake3 against
        the one recorded at ingest when given; None when nothing is."""
        fd, info = self._open_fd(digest)
        try:
            if not blake3:
                actual = Digest(hash_fd(fd, info.st_size))
                return None if actual == digest else f"sha256 is {actual}"
            actual_b3 = hash_fd(fd, info.st_size, use_blake3=True)
            return None if actual_b3 == blake3 else f"blake3 is {actual_b3}, recorded {blake3}"
        finally:
            os.close(fd)

    def _quarantine(self, digest: Digest) -> Path:
        make_dirs(self.corrupt_dir, self.root)
        name = f"sha256-{digest.hex}-{int(time.time())}"
        corrupt = Folder.at(self.root, "corrupt", make=False)
        try:
            with self.lock(digest):
                self.blobs_folder.rename(digest.hex, corrupt, name)  # a link moves as a link
            corrupt.fsync()
        finally:
            corrupt.close()
        self.blobs_folder.fsync()
        return self.corrupt_dir / name


def _published(info: os.stat_result | None) -> bool:
    """Whether a file in blobs/ can be a blob we published: a regular file readable by everyone (we
    publish 0444). A private file (a hard link to someone's secrets) never is."""
    return info is not None and stat.S_ISREG(info.st_mode) and info.st_mode & PUBLISHED_MODE == PUBLISHED_MODE


def _check_meta_files(meta: Folder, store: BlobStore) -> None:
    """Before SQLite opens the metadata index (it follows links): remove a link or special file put
    in place of one of its files, and refuse a database emptied under a cache that holds blobs
    (SQLite would silently start an empty one)."""
    for name in (DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm", f"{DBNAME}-journal"):
        info = meta.lstat(name)
        if info is not None and (not stat.S_ISREG(info.st_mode) or info.st_nlink != 1):
            meta.remove(name)
    info = meta.lstat(DBNAME)
    if info is not None and info.st_size == 0 and next(iter(store.digests()), None) is not None:
        raise sqlite3.DatabaseError(f"{DBNAME} is empty")
