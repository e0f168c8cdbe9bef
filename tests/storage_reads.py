"""What the tests of direct reads of a daemon's storage (dockerd's, podman's) share: files with the
shapes real layers have, a stored layer's tar, and the kernel's count of bytes read."""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore


def write_layer_shapes(files: Path) -> None:
    """Folders, a big random file, an empty one, a symlink, a hard link and a name that is not UTF-8."""
    (files / "deep" / "er").mkdir(parents=True)
    (files / "big.bin").write_bytes(os.urandom(1_500_000))
    (files / "empty").write_bytes(b"")
    (files / "deep" / "er" / "text.txt").write_text("text\n" * 5000)
    os.symlink("big.bin", files / "link")
    os.link(files / "big.bin", files / "hard")
    (files / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")


def stored_tar(store: BlobStore, digest: str) -> bytes:
    """A stored zstd layer, uncompressed."""
    with open(store.blobs_dir / parse_digest(digest).hex, "rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle).read()


def read_bytes() -> int:
    """Bytes this process has read through read(2) and friends so far, as the kernel counts them."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")
