"""``containerd:[NAMESPACE/]NAME``: an image from containerd's content store, its blobs linked in.

containerd keeps every blob of an image exactly as the registry (or an import) gave it, under
``<root>/io.containerd.content.v1.content/blobs/sha256/<hex>``: the same layout as our own
``blobs/``. So a pull here copies nothing it does not have to:

1. The name is resolved to its target descriptor over containerd's API
   (:mod:`cache.sources.containerd_names`); Docker's containerd image store (namespace ``moby``)
   gives the same digest as the image ID, which ``docker-daemon:`` then reads here
   (:func:`pull_target`).
2. The target (an index: the platform asked, else the host's), the manifest and the config are
   read from the content folder, each checked against its digest and size.
3. Every layer not stored yet is read once from the content folder: its sha256 and size, and its
   diff_id (decompressed as it is read) against the config. Only when every blob checked out is
   anything published: a layer by a hard link to containerd's own file when the cache is on the
   same file system (no byte copied; the inode linked is the one hashed), else by a copy that is
   hashed again as it is written. The verified (blob, diff_id) pairs are recorded, and the image
   ends in the one commit path (:mod:`cache.ingest.commit`), its name keeping the index whole.

What it trusts: containerd's answer names a digest, nothing more; every byte read from the
content folder is hashed before it counts, files are opened read-only with ``O_NOFOLLOW`` and
must be regular files of the size the descriptor says. A blob that does not check out fails the
pull with one line and nothing is stored. The content folder must be readable here (root, or a
rootless containerd's own user): ``--containerd-root``, else /var/lib/containerd.

A NAME with a namespace: the first path component is the namespace when what follows it starts
with a registry host (``k8s.io/docker.io/library/alpine:3.20``); containerd stores names as full
references, so ``docker.io/library/alpine:3.20`` alone is in the namespace ``default``.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from cache.errors import DigestMismatch, InvalidManifest, InvalidReference, SizeMismatch, SourceError
from cache.formats.compression import CorruptLayer, DiffIdHasher
from cache.ingest.commit import Arrival, commit
from cache.ingest.report import LayerReport, PullReport
from cache.model.digest import Digest, Hasher, sha256_of
from cache.model.manifests import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    compression_of,
    parse_config,
    parse_manifest_or_index,
)
from cache.model.refs import Source
from cache.progress import ProgressFactory
from cache.sources.containerd_names import DEFAULT_NAMESPACE, containerd_address, resolve
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions

DEFAULT_ROOT = "/var/lib/containerd"
CONTENT = ("io.containerd.content.v1.content", "blobs", "sha256")
READ_BYTES = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no link followed, no FIFO waited on


class ContainerdSource(NamedTuple):
    namespace: str
    name: str  # as containerd stores it: a full reference, like docker.io/library/alpine:3.20

    @property
    def kind(self) -> str:
        return "containerd"

    def __str__(self) -> str:
        return f"containerd:{self.namespace}/{self.name}"


def parse(body: str) -> ContainerdSource:
    """``[NAMESPACE/]NAME`` (see the module text for how the namespace is told apart)."""
    if not body:
        raise InvalidReference("containerd: needs an image name, like containerd:docker.io/library/alpine:3.20")
    first, _, rest = body.partition("/")
    host = rest.partition("/")[0]
    if rest and "/" in rest and ("." in host or ":" in host or host == "localhost"):
        if not first or first.startswith((".", "-")) or not all(c.isalnum() or c in "._-" for c in first):
            raise InvalidReference(f"containerd: namespace {first!r} is not a containerd namespace name")
        return ContainerdSource(first, rest)
    return ContainerdSource(DEFAULT_NAMESPACE, body)


def pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    assert isinstance(source, ContainerdSource)
    return pull_from_containerd(store, source, address=options.containerd_address, root=options.containerd_root,
                                platform=options.platform, jobs=options.jobs, progress=options.progress)


def cache_name(source: ContainerdSource) -> str:
    """The name in index.json: apart from the registry's image of the same reference, as a daemon
    image is (``docker-daemon:…``)."""
    return str(source)


class ContentStore:
    """containerd's content folder, held open; blobs are opened below it by digest."""

    def __init__(self, root: str) -> None:
        self.where = os.path.join(root, *CONTENT)
        try:
            self._fd = os.open(self.where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise SourceError(f"cannot read containerd's content store {self.where}: {error.strerror}; "
                              "point at containerd's root with --containerd-root") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, digest: Digest) -> bool:
        try:
            return stat.S_ISREG(os.stat(digest.hex, dir_fd=self._fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def open(self, descriptor: Descriptor) -> int:
        """The blob's file, a regular file of the descriptor's size (the caller closes it)."""
        fd, size = self.open_sized(descriptor.digest)
        if size != descriptor.size:
            os.close(fd)
            raise SizeMismatch(f"{self.where}/{descriptor.digest.hex} is {size} bytes, its descriptor says "
                               f"{descriptor.size}")
        return fd

    def open_sized(self, digest: Digest) -> tuple[int, int]:
        """The blob's file and its size; it must be a regular file (the caller closes it)."""
        path = f"{self.where}/{digest.hex}"
        try:
            fd = os.open(digest.hex, _FLAGS, dir_fd=self._fd)  # hex is checked: no path tricks
        except OSError as error:
            raise SourceError(f"cannot read {path}: {error.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise SourceError(f"{path} is not a regular file")
        return fd, info.st_size

    def small(self, descriptor: Descriptor, limit: int) -> bytes:
        """A manifest, index or config, checked against its digest."""
        if descriptor.size > limit:
            raise InvalidManifest(f"blob {descriptor.digest} is {descriptor.size} bytes, more than {limit} allowed")
        fd = self.open(descriptor)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(limit + 1)
        if len(raw) != descriptor.size or sha256_of(raw) != descriptor.digest:
            raise DigestMismatch(f"{self.where}/{descriptor.digest.hex} does not hash to its name")
        return raw


@dataclass
class _CheckedLayer:
    descriptor: Descriptor
    diff_id: Digest
    fd: int | None  # containerd's file, hashed; None when the layer was stored already
    blake3: str = ""
    report: LayerReport = field(init=False)

    def __post_init__(self) -> None:
        self.report = LayerReport(str(self.descriptor.digest), str(self.diff_id), self.descriptor.size,
                                  self.descriptor.media_type, reused=self.fd is None)


def pull_from_containerd(
    store: BlobStore,
    source: ContainerdSource,
    *,
    address: str | None = None,
    root: str | None = None,
    platform: Platform | None = None,
    jobs: int = 2,
    progress: ProgressFactory | None = None,
) -> PullReport:
    """Bring ``source`` into ``store`` from containerd; see the module text for how."""
    started = time.monotonic()
    target = resolve(containerd_address(address), source.namespace, source.name)
    with ContentStore(root or DEFAULT_ROOT) as content:
        return pull_target(store, content, target, [cache_name(source)], str(source), started,
                           platform=platform, jobs=jobs, progress=progress)


def target_of(content: ContentStore, digest: Digest) -> Descriptor:
    """A descriptor for a top blob known only by digest (Docker's image ID in its containerd
    store): its size from the file, its media type from its own JSON."""
    fd, size = content.open_sized(digest)
    os.close(fd)
    if size > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"manifest {digest} is {size} bytes, more than {MAX_MANIFEST_BYTES} allowed")
    raw = content.small(Descriptor(OCI_MANIFEST, digest, size), MAX_MANIFEST_BYTES)
    top = parse_manifest_or_index(raw, None, f"manifest {digest}")
    return Descriptor(top.media_type or (OCI_INDEX if isinstance(top, Index) else OCI_MANIFEST), digest, size)


def pull_target(
    store: BlobStore,
    content: ContentStore,
    target: Descriptor,
    names: Sequence[str],
    source: str,
    started: float,
    *,
    platform: Platform | None = None,
    jobs: int = 2,
    progress: ProgressFactory | None = None,
) -> PullReport:
    """The image ``target`` names in containerd's content store, named ``names``."""
    top = parse_manifest_or_index(content.small(target, MAX_MANIFEST_BYTES), target.media_type,
                                  f"manifest {target.digest}")
    fetched = target.size
    manifest, chosen = top, None
    if isinstance(top, Index):
        entry = top.choose(platform or Platform.host())
        manifest = parse_manifest_or_index(content.small(entry, MAX_MANIFEST_BYTES), entry.media_type,
                                           f"manifest {entry.digest}")
        if not isinstance(manifest, Manifest):
            raise InvalidManifest(f"manifest {entry.digest}: nested indexes are not supported")
        chosen, fetched = entry.platform, fetched + entry.size
    assert isinstance(manifest, Manifest)
    config_raw = content.small(manifest.config, MAX_CONFIG_BYTES)
    config = parse_config(config_raw, f"config {manifest.config.digest}")
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidManifest(f"manifest {manifest.digest} lists {len(manifest.layers)} layers, "
                              f"its config {len(config.diff_ids)}")
    layers = _check_layers(store, content, manifest, list(config.diff_ids), jobs, progress)
    try:  # every blob checked out: only now is anything published
        for layer in layers:
            _publish(store, layer, source)
    finally:
        for layer in layers:
            if layer.fd is not None:
                os.close(layer.fd)
    store.put_bytes(config_raw, manifest.config.media_type or OCI_CONFIG, source)
    new = sum(layer.descriptor.size for layer in layers if layer.fd is not None)
    arrival = Arrival(source, top, [manifest], chosen=manifest, platform=chosen or config.platform,
                      layers=[layer.report for layer in layers], bytes_fetched=fetched + len(config_raw) + new)
    report = commit(store, arrival, names, started)
    report.route = "containerd"
    return report


def _check_layers(
    store: BlobStore, content: ContentStore, manifest: Manifest, diff_ids: list[Digest], jobs: int,
    progress: ProgressFactory | None,
) -> list[_CheckedLayer]:
    """Each layer: reused when stored with this diff_id verified, else read from containerd and
    checked (digest, size, diff_id), its file kept open for publishing."""
    def one(pair: tuple[Descriptor, Digest]) -> _CheckedLayer:
        descriptor, diff_id = pair
        if store.has(descriptor.digest) and store.index.diff_id_of(descriptor.digest) == diff_id:
            return _CheckedLayer(descriptor, diff_id, None)
        fd = content.open(descriptor)
        try:
            return _CheckedLayer(descriptor, diff_id, fd, _hash_layer(fd, descriptor, diff_id, content.where, progress))
        except BaseException:
            os.close(fd)
            raise

    pairs = list(zip(manifest.layers, diff_ids, strict=True))
    workers = max(1, min(jobs, len(pairs) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layerhoard-ctd") as pool:
        futures = [pool.submit(one, pair) for pair in pairs]
    checked = [future.result() for future in futures if future.exception() is None]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        for layer in checked:
            if layer.fd is not None:
                os.close(layer.fd)
        raise errors[0]
    return checked


def _hash_layer(fd: int, descriptor: Descriptor, diff_id: Digest, where: str, progress: ProgressFactory | None) -> str:
    """Read the whole file: sha256 and blake3 of its bytes, and the sha256 of them uncompressed."""
    what = f"{where}/{descriptor.digest.hex}"
    hasher = Hasher()
    compression = compression_of(descriptor.media_type)
    uncompressed = DiffIdHasher(compression) if compression != "none" else None
    bar = progress(f"containerd {descriptor.digest.hex[:12]}", descriptor.size) if progress else None
    try:
        for chunk in _chunks(fd):
            hasher.update(chunk)
            if uncompressed is not None:
                uncompressed.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
        actual = uncompressed.finish() if uncompressed is not None else hasher.digest
    except CorruptLayer as error:
        raise DigestMismatch(f"{what} does not decompress as {compression}: {error}") from None
    finally:
        if bar is not None:
            bar.close()
    if hasher.size != descriptor.size or hasher.digest != descriptor.digest:
        raise DigestMismatch(f"{what} hashes to {hasher.digest} ({hasher.size} bytes), not its name; "
                             "nothing was stored")
    if actual != diff_id:
        raise DigestMismatch(f"{what} uncompresses to {actual}, the config says {diff_id}; nothing was stored")
    return hasher.blake3


def _chunks(fd: int) -> Iterator[bytes]:
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, READ_BYTES):
        yield chunk


def _publish(store: BlobStore, layer: _CheckedLayer, source: str) -> None:
    """Link containerd's file in (same file system), else copy it (hashed again as written)."""
    if layer.fd is None:
        return
    descriptor = layer.descriptor
    try:
        written = store.adopt_link(layer.fd, descriptor.digest, descriptor.size, layer.blake3,
                                   descriptor.media_type, source)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM):
            raise
        written = store.ingest(descriptor.digest, _chunks(layer.fd), descriptor.size, descriptor.media_type, source)
    # The pair is ours: the bytes hashed to the digest and uncompressed to the diff_id just now.
    store.index.record_diff_id(descriptor.digest, layer.diff_id, descriptor.media_type)
    layer.report.reused = not written
