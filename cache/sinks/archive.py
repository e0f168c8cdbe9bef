"""Export as a `docker load` tarball (``docker-archive:FILE`` or ``-`` for stdout), streamed.

The tar is written entry by entry straight from the store: every size is known from the
descriptors, so headers go out first and the blob bytes follow without the tar ever being built
in memory. The layout is the one `docker save` and skopeo write:

    manifest.json          [{"Config": "<hex>.json", "RepoTags": [...], "Layers": ["<hex>.tar", ...]}]
    <config hex>.json      the config, exact bytes
    <layer hex>.tar        each layer blob as stored (gzip or uncompressed; docker load detects which)

Headers are deterministic (mtime 0, root-owned), so the same image gives the same tarball.
dockerd before 23 cannot read zstd layers; callers transcode them first (cache.sinks.export).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from cache.model.digest import Digest
from cache.model.manifests import Manifest
from cache.store.blobstore import BlobStore

BLOCK = tarfile.BLOCKSIZE
COPY_CHUNK = 4 << 20


@dataclass
class ArchiveResult:
    bytes_written: int = 0


def write_archive(store: BlobStore, manifest: Manifest, repo_tags: list[str], out: BinaryIO) -> ArchiveResult:
    """Write the tarball of ``manifest`` (whose blobs are all stored) to ``out``."""
    config_name = f"{manifest.config.digest.hex}.json"
    layer_names = [f"{layer.digest.hex}.tar" for layer in manifest.layers]
    index = [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]
    writer = TarWriter(out)
    writer.add_bytes("manifest.json", json.dumps(index, separators=(",", ":")).encode())
    writer.add_bytes(config_name, store.read_bytes(manifest.config.digest))
    for layer in dict.fromkeys(layer.digest for layer in manifest.layers):  # a repeated layer goes once
        writer.add_blob(store, layer)
    writer.close()
    return ArchiveResult(writer.written)


class TarWriter:
    """A ustar stream whose entries are copied from files of known size (no seeking, no buffering)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.written = 0
        self._fd = _fileno(out)

    def _header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        info.uname = info.gname = "root"
        self._write(info.tobuf(tarfile.USTAR_FORMAT))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(b"\0" * (BLOCK - size % BLOCK))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))

    def add_blob(self, store: BlobStore, digest: Digest, name: str | None = None) -> int:
        """Copy a stored blob in as ``name`` (``<hex>.tar``, docker's name, by default); its size."""
        with store.open(digest) as source:
            size = os.fstat(source.fileno()).st_size
            self._header(name or f"{digest.hex}.tar", size)
            self._copy(source, size)
        self._pad(size)
        return size

    def _copy(self, source: BinaryIO, size: int) -> None:
        if self._fd is not None:
            self._out.flush()
            offset = 0
            try:
                while offset < size:  # kernel to kernel: file or pipe, no Python buffers
                    sent = os.sendfile(self._fd, source.fileno(), offset, min(size - offset, 1 << 30))
                    if sent == 0:
                        break
                    offset += sent
            except OSError:
                if offset:
                    raise
            else:
                self.written += offset
                if offset == size:
                    return
                raise OSError(f"blob shrank while being written ({offset} of {size} bytes)")
        shutil.copyfileobj(source, self._out, COPY_CHUNK)
        self.written += size

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))  # end of archive
        self._out.flush()


def _fileno(out: BinaryIO) -> int | None:
    try:
        return out.fileno()
    except (AttributeError, OSError, ValueError):
        return None
