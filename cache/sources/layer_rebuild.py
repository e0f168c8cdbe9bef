"""A layer's exact tar rebuilt from a daemon's own storage: its tar-split record replayed with the
files of its folder, hashed to its diff_id and compressed with our fixed zstd on the way into
ingest/, without the daemon exporting anything.

dockerd (:mod:`cache.sources.dockerd_storage`) and podman's containers-storage
(:mod:`cache.sources.containers_storage`) both keep, for each layer, the files it unpacked and the
rest of the layer's original tar (headers, padding, the end-of-archive blocks) as a tar-split
record; they differ only in where those two are. A storage says where (:class:`LayerPlace`); this
module does the rest, the same way for both.

What it trusts: nothing under the storage root. Every path is walked one component at a time from
an open folder with ``O_NOFOLLOW`` (a planted link fails the open), a tar-split name with ``..`` is
refused, a file must be a regular file of exactly the recorded size, and the tar's sha256 settles
the rest. Files are opened read-only and never locked. Anything unreadable, missing, changed or not
hashing right raises :class:`DirectReadRefused` with one line; the caller then streams ``docker
save`` instead. Nothing read here is published by this module: the caller publishes once the
whole image checked out.

What it costs: only the layers asked for are read, each once, from the page cache or disk, through
the three-thread pipeline of the save stream (hash the tar, zstd, hash and write the blob), with
zstd's own workers spreading each layer over the cores. Two layers run at once (hashlib, zstd and
reads release the GIL): one fills the cores while the other's pipeline starts or drains, and memory
stays that of two pipelines whatever the number of cores.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
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

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the open
MAX_CONFIG = 64 << 20  # as the store's own limit for a config
LAYERS_AT_ONCE = 2  # see the module's docstring: cores come from zstd's workers, not from more layers


def root_and_driver(info: dict[str, Any], drivers: Collection[str], whose: str) -> tuple[str, str]:
    """The storage root (``DockerRootDir``) and driver a daemon's ``/info`` names, when the driver is
    one of ``drivers``; else DirectReadRefused saying why not (``whose``: "the daemon's", "podman's")."""
    driver, root = info.get("Driver"), info.get("DockerRootDir")
    if driver not in drivers:
        raise DirectReadRefused(f"{whose} storage driver is {driver!r}, not {' or '.join(drivers)}")
    if not isinstance(root, str) or not root.startswith("/"):
        raise DirectReadRefused(f"{whose} /info names no data root")
    return root, str(driver)


@dataclass(frozen=True)
class LayerPlace:
    """Where one layer is below a storage root: its tar-split record and the folder of its files,
    each as path components."""

    diff_id: Digest
    tar_split: tuple[str, ...]
    files: tuple[str, ...]
    size: int | None = None  # the tar's size as the storage records it: for progress only


@dataclass
class RebuiltLayer:
    diff_id: Digest
    staged: StagedBlob
    tar_size: int  # uncompressed bytes read from the daemon's storage


class StorageRoot(ABC):
    """A daemon's storage root, held open; every file below it is reached with :meth:`open`.
    A subclass knows one storage's layout: where the image's config is, where each layer is."""

    route: str  # how ``pull --json`` names a pull that read this storage

    def __init__(self, root: str, marker: Sequence[str], kind: str) -> None:
        """Open ``root``, which must hold the folder ``marker`` to be a ``kind``."""
        self.where = root
        try:  # the root itself is the daemon's setting (it may be a link); nothing below it may be
            self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise DirectReadRefused(f"cannot read the daemon's data root {root}: {error.strerror}") from None
        try:
            os.close(walk(self._fd, marker, DIR_FLAGS))
        except OSError as error:
            os.close(self._fd)
            if isinstance(error, FileNotFoundError):
                raise DirectReadRefused(f"{root} has no {'/'.join(marker)}: not a {kind}") from None
            raise DirectReadRefused(f"cannot read the daemon's data root {root}: {error.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> StorageRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def config(self, image_id: Digest) -> bytes:
        """The image's config as the daemon keeps it, checked against its ID."""

    @abstractmethod
    def places(self, diff_ids: Sequence[Digest], wanted: Collection[Digest]) -> list[LayerPlace]:
        """Where each layer of ``wanted`` is, for the image whose layers are ``diff_ids`` (in order)."""

    def open(self, parts: Sequence[str | bytes], flags: int = FILE_FLAGS) -> int:
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

    def read_config(self, parts: Sequence[str], image_id: Digest) -> bytes:
        """The image's config at ``parts``, which must hash to the image ID."""
        raw = self.read_small(parts, MAX_CONFIG)
        if sha256_of(raw) != image_id:
            raise DirectReadRefused(f"the daemon's stored config of {image_id} does not hash to it")
        return raw


def walk(top: int, parts: Iterable[str | bytes], flags: int) -> int:
    """Open ``parts`` below the folder ``top`` one component at a time, following no link."""
    parts = list(parts)
    current = top
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=current)
            if current != top:
                os.close(current)
            current = child
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != top:
            os.close(current)


class _Stopped(DirectReadRefused):
    """A layer given up because another one failed (that one's error is the one raised)."""


class LayerFolder:
    """A layer's folder of files: opens the files tar-split names, confined to it. Files come in
    tar order, so the folder of the last file is kept open for the next."""

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
                    self._parent_fd = walk(self._fd, parent, DIR_FLAGS)
                self._parent = parent
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=self._parent_fd)
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
    storage: StorageRoot,
    place: LayerPlace,
    staging: Staging,
    *,
    stop: threading.Event | None = None,
    progress: ProgressFactory | None = None,
) -> RebuiltLayer:
    """The layer's tar rebuilt from the daemon's storage, zstd-compressed into ``staging`` and
    hashed to its diff_id; DirectReadRefused (and nothing kept) when it is not exactly that."""
    what = f"layer {place.diff_id} in {storage.where}"
    tar_split = storage.open(place.tar_split)
    try:
        folder = LayerFolder(storage.open(place.files, DIR_FLAGS), what)
    except BaseException:
        os.close(tar_split)
        raise
    bar = progress(f"{storage.route} {place.diff_id.hex[:12]}", place.size) if progress else None
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
    if digest != place.diff_id:
        raise DirectReadRefused(f"{what} rebuilt from tar-split hashes to {digest}, not its diff_id")
    return RebuiltLayer(place.diff_id, staged, tar.size)


def _copy(folder: LayerFolder, tar: _TarAssembly, entry: FileEntry, what: str) -> None:
    fd = folder.open(entry.name, entry.size)
    try:
        tar.copy_file(fd, entry.size, f"{what}: {os.fsdecode(entry.name)}")
    except OSError as error:
        raise DirectReadRefused(f"{what}: cannot read {os.fsdecode(entry.name)}: {error.strerror}") from None
    finally:
        os.close(fd)


def rebuild_layers(
    storage: StorageRoot,
    places: Sequence[LayerPlace],
    staging: Staging,
    progress: ProgressFactory | None = None,
) -> list[RebuiltLayer]:
    """Each layer of ``places`` rebuilt, ``LAYERS_AT_ONCE`` at a time; the first failure stops the
    rest and is raised (the staged files stay for ``staging.discard``)."""
    if not places:
        return []
    stop = threading.Event()

    def one(place: LayerPlace) -> RebuiltLayer:
        try:
            return rebuild_layer(storage, place, staging, stop=stop, progress=progress)
        except BaseException:
            stop.set()
            raise

    if len(places) == 1:
        return [one(places[0])]
    workers = min(len(places), LAYERS_AT_ONCE)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layerhoard-rebuild") as pool:
        futures = [pool.submit(one, place) for place in places]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise next((error for error in errors if not isinstance(error, _Stopped)), errors[0])
    return [f.result() for f in futures]
