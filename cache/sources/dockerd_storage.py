"""A legacy dockerd's layers read from its overlay2 (or vfs) storage, without ``docker save``.

dockerd keeps, for each layer, the files it unpacked (``overlay2/<cache-id>/diff``) and the rest
of the layer's original tar as a tar-split record
(``image/overlay2/layerdb/sha256/<chain-id>/tar-split.json.gz``, beside ``cache-id`` and ``diff``);
it replays one through the other for ``docker save``. vfs keeps the same records under
``image/vfs/``; its ``vfs/dir/<cache-id>`` is the whole file system after the layer, not only the
layer's files, but the files a layer's tar-split names hold there exactly the bytes that layer
gave them, which is all a replay reads. So do we: the rebuilt tar is hashed as it
goes and counts only if its sha256 is the inspected diff_id, and it is compressed with our fixed
zstd on the way into ingest/ (:class:`cache.sources.staging.BackgroundSink`). A chain ID names a
layer with everything under it: ``chainID(1) = diffID(1)``, ``chainID(n) = sha256(chainID(n-1) +
" " + diffID(n))``. The image's config is ``image/overlay2/imagedb/content/sha256/<image ID>``,
hashed to the image ID.

What it costs: only new layers are read, each once, from the page cache or disk, with no daemon
process in between and nothing built before the first byte; several new layers run on as many
threads as there are cores (hashlib, zstd and reads release the GIL).

What it trusts: nothing under the data root. Every path is walked one component at a time from an
open folder with ``O_NOFOLLOW`` (a planted link fails the open), a tar-split name with ``..`` is
refused, a file must be a regular file of exactly the recorded size, and the tar's sha256 settles
the rest. Files are opened read-only and never locked. Anything unreadable, missing, changed or
not hashing right raises :class:`DirectReadRefused` with one line; the caller then streams
``docker save`` instead. Nothing read here is published before the whole image checked out.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cache.errors import DirectReadRefused
from cache.formats.compression import zstd_compressor
from cache.formats.tar_split import FileEntry, Segment, confined_parts, records
from cache.model.digest import Digest, sha256_of
from cache.model.manifests import OCI_LAYER_ZSTD
from cache.progress import Progress, ProgressFactory
from cache.sources.staging import BUFFER_BYTES, BackgroundSink, StagedBlob, Staging

OVERLAY2 = "overlay2"
# Where each driver keeps a layer's files, below the data root: the parts around the cache-id.
LAYER_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    OVERLAY2: ((OVERLAY2,), ("diff",)),
    "vfs": (("vfs", "dir"), ()),
}
MAX_CONFIG = 64 << 20  # as the store's own limit for a config
MAX_SMALL_FILE = 256  # a layerdb ``diff`` or ``cache-id`` file: one digest or ID
_CACHE_ID = re.compile(rb"[0-9a-f]{64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the open


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The chain ID of each layer: the name dockerd's layer store gives a layer and all below it."""
    chain: list[Digest] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else sha256_of(f"{chain[-1]} {diff_id}".encode()))
    return chain


def daemon_storage(info: dict[str, Any] | None) -> tuple[str, str]:
    """The data root and driver of a daemon whose ``/info`` says it keeps layers where they can be
    read (overlay2, vfs); else DirectReadRefused saying why not."""
    if info is None:
        raise DirectReadRefused("the daemon did not answer /info, so its storage is unknown")
    driver, root = info.get("Driver"), info.get("DockerRootDir")
    if driver not in LAYER_FOLDERS:
        raise DirectReadRefused(f"the daemon's storage driver is {driver!r}, not overlay2 or vfs")
    if not isinstance(root, str) or not root.startswith("/"):
        raise DirectReadRefused("the daemon's /info names no data root")
    return root, str(driver)


class _Stopped(DirectReadRefused):
    """A layer given up because another one failed (that one's error is the one raised)."""


@dataclass
class RebuiltLayer:
    diff_id: Digest
    staged: StagedBlob
    tar_size: int  # uncompressed bytes read from the daemon's storage


class LayerStorage:
    """A dockerd data root of one driver, held open; every file below it is reached with :meth:`open`."""

    def __init__(self, data_root: str, driver: str = OVERLAY2) -> None:
        self.where = data_root
        self.driver = driver
        try:  # the root itself is the daemon's setting (it may be a link); nothing below it may be
            self._fd = os.open(data_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise DirectReadRefused(f"cannot read the daemon's data root {data_root}: {error.strerror}") from None
        try:
            os.close(walk(self._fd, ["image", driver, "layerdb"], _DIR_FLAGS))
        except FileNotFoundError:  # podman answers /info with its containers-storage graph root
            os.close(self._fd)
            raise DirectReadRefused(f"{data_root} has no image/{driver}/layerdb: not a dockerd data root "
                                    "(podman's containers-storage is not read directly)") from None
        except OSError as error:
            os.close(self._fd)
            raise DirectReadRefused(f"cannot read the daemon's data root {data_root}: {error.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LayerStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, parts: Sequence[str | bytes], flags: int = _FILE_FLAGS) -> int:
        """A descriptor for ``parts`` below the root, no link followed; DirectReadRefused if not."""
        try:
            return walk(self._fd, parts, flags)
        except OSError as error:
            path = "/".join(os.fsdecode(p) for p in parts)
            raise DirectReadRefused(f"cannot read {self.where}/{path}: {error.strerror}") from None

    def read_small(self, parts: Sequence[str], limit: int) -> bytes:
        """A whole regular file below the root, refused above ``limit`` bytes."""
        fd = self.open(parts)
        path = f"{self.where}/{'/'.join(parts)}"
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                raise DirectReadRefused(f"{path} is not a regular file of at most {limit} bytes")
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as error:
            raise DirectReadRefused(f"cannot read {path}: {error.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > limit:
            raise DirectReadRefused(f"{path} grew past {limit} bytes while read")
        return data

    def config(self, image_id: Digest) -> bytes:
        """The image's config as dockerd keeps it, checked against its ID."""
        raw = self.read_small(["image", self.driver, "imagedb", "content", "sha256", image_id.hex], MAX_CONFIG)
        if sha256_of(raw) != image_id:
            raise DirectReadRefused(f"the daemon's stored config of {image_id} does not hash to it")
        return raw

    def layer_files(self, chain_id: Digest, diff_id: Digest) -> tuple[int, int]:
        """Descriptors of the layer's tar-split record and its files' folder (the caller closes both)."""
        layerdb = ["image", self.driver, "layerdb", "sha256", chain_id.hex]
        if self.read_small([*layerdb, "diff"], MAX_SMALL_FILE).strip() != str(diff_id).encode():
            raise DirectReadRefused(f"the daemon's layer {chain_id} is not the layer {diff_id}")
        cache_id = self.read_small([*layerdb, "cache-id"], MAX_SMALL_FILE).strip()
        if not _CACHE_ID.fullmatch(cache_id):
            raise DirectReadRefused(f"the daemon's layer {chain_id} has a cache-id that is not a layer ID")
        tar_split = self.open([*layerdb, "tar-split.json.gz"])
        before, after = LAYER_FOLDERS[self.driver]
        try:
            return tar_split, self.open([*before, cache_id.decode(), *after], _DIR_FLAGS)
        except BaseException:
            os.close(tar_split)
            raise


def walk(top: int, parts: Iterable[str | bytes], flags: int) -> int:
    """Open ``parts`` below the folder ``top`` one component at a time, following no link."""
    parts = list(parts)
    current = top
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=current)
            if current != top:
                os.close(current)
            current = child
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != top:
            os.close(current)


class _DiffFolder:
    """A layer's diff folder: opens the files tar-split names, confined to it. Files come in tar
    order, so the folder of the last file is kept open for the next."""

    def __init__(self, fd: int, what: str) -> None:
        self._fd = fd
        self._what = what
        self._parent: tuple[bytes, ...] = ()
        self._parent_fd = fd

    def open(self, name: bytes, size: int) -> int:
        """A descriptor of the regular file ``name``, which must be ``size`` bytes long."""
        parts = confined_parts(name)
        if parts is None:
            raise DirectReadRefused(f"{self._what}: tar-split names {name!r}, outside the layer's folder")
        parent = tuple(parts[:-1])
        try:
            if parent != self._parent:
                self._close_parent()
                if parent:
                    self._parent_fd = walk(self._fd, parent, _DIR_FLAGS)
                self._parent = parent
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=self._parent_fd)
        except OSError as error:
            raise DirectReadRefused(f"{self._what}: cannot read {os.fsdecode(name)}: {error.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            os.close(fd)
            raise DirectReadRefused(f"{self._what}: {os.fsdecode(name)} is not the {size}-byte file tar-split records")
        return fd

    def _close_parent(self) -> None:
        if self._parent_fd != self._fd:
            os.close(self._parent_fd)
        self._parent_fd, self._parent = self._fd, ()

    def close(self) -> None:
        self._close_parent()
        os.close(self._fd)


class _TarAssembly:
    """The rebuilt tar, written into the sink's buffers and hashed before each is handed over."""

    def __init__(self, sink: BackgroundSink, progress: Progress | None) -> None:
        self._sink = sink
        self._progress = progress
        self._sha = hashlib.sha256()
        self.size = 0
        self._buffer = sink.buffer()
        self._used = 0

    def _room(self) -> memoryview:
        """The free part of the current buffer, handing a full one over first."""
        if self._used == len(self._buffer):
            self._hand_over()
            self._buffer = self._sink.buffer()
        return self._buffer[self._used :]

    def _hand_over(self) -> None:
        if self._used:
            self._sha.update(self._buffer[: self._used])
            self._sink.submit(self._buffer, self._used)
            self.size += self._used
            if self._progress is not None:
                self._progress.update(self._used)
            self._used = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self._room()
            take = min(len(room), len(view))
            room[:take] = view[:take]
            self._used += take
            view = view[take:]

    def copy_file(self, fd: int, size: int, what: str) -> None:
        """``size`` bytes of the open file ``fd``, read straight into the buffers."""
        left = size
        while left:
            room = self._room()
            count = os.readv(fd, [room[: min(len(room), left)]])
            if count == 0:
                raise DirectReadRefused(f"{what} shrank while it was read")
            self._used += count
            left -= count

    def finish(self) -> Digest:
        self._hand_over()
        return Digest(self._sha.hexdigest())


def rebuild_layer(
    storage: LayerStorage,
    chain_id: Digest,
    diff_id: Digest,
    staging: Staging,
    *,
    stop: threading.Event | None = None,
    progress: ProgressFactory | None = None,
) -> RebuiltLayer:
    """The layer's tar rebuilt from the daemon's storage, zstd-compressed into ``staging`` and
    hashed to ``diff_id``; DirectReadRefused (and nothing kept) when it is not exactly that."""
    what = f"layer {diff_id} in {storage.where}"
    tar_split, diff_folder = storage.layer_files(chain_id, diff_id)
    folder = _DiffFolder(diff_folder, what)
    bar = progress(f"{storage.driver} {diff_id.hex[:12]}", None) if progress else None
    sink = BackgroundSink(staging.writer(OCI_LAYER_ZSTD), zstd_compressor(), BUFFER_BYTES)
    try:
        tar = _TarAssembly(sink, bar)
        with os.fdopen(tar_split, "rb") as handle:
            for record in records(handle, f"{what}: tar-split"):
                if stop is not None and stop.is_set():
                    raise _Stopped(f"{what}: stopped, another layer failed")
                if isinstance(record, Segment):
                    tar.write(record.data)
                elif isinstance(record, FileEntry) and record.size:
                    _copy(folder, tar, record, what)
        digest = tar.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        folder.close()
        if bar is not None:
            bar.close()
    staged = sink.finish()
    if digest != diff_id:
        raise DirectReadRefused(f"{what} rebuilt from tar-split hashes to {digest}, not its diff_id")
    return RebuiltLayer(diff_id, staged, tar.size)


def _copy(folder: _DiffFolder, tar: _TarAssembly, entry: FileEntry, what: str) -> None:
    fd = folder.open(entry.name, entry.size)
    try:
        tar.copy_file(fd, entry.size, f"{what}: {os.fsdecode(entry.name)}")
    except OSError as error:
        raise DirectReadRefused(f"{what}: cannot read {os.fsdecode(entry.name)}: {error.strerror}") from None
    finally:
        os.close(fd)


def rebuild_layers(
    storage: LayerStorage,
    wanted: Sequence[tuple[Digest, Digest]],
    staging: Staging,
    progress: ProgressFactory | None = None,
) -> list[RebuiltLayer]:
    """Each (chain ID, diff_id) of ``wanted`` rebuilt, as many at once as there are cores; the
    first failure stops the rest and is raised (the staged files stay for ``staging.discard``)."""
    if not wanted:
        return []
    stop = threading.Event()

    def one(pair: tuple[Digest, Digest]) -> RebuiltLayer:
        try:
            return rebuild_layer(storage, pair[0], pair[1], staging, stop=stop, progress=progress)
        except BaseException:
            stop.set()
            raise

    if len(wanted) == 1:
        return [one(wanted[0])]
    workers = min(len(wanted), os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layerhoard-overlay2") as pool:
        futures = [pool.submit(one, pair) for pair in wanted]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise next((error for error in errors if not isinstance(error, _Stopped)), errors[0])
    return [f.result() for f in futures]
