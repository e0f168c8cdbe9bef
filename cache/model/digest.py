"""Digests: strict parsing of ``sha256:<hex>`` and the hashing writer used by every ingest.

A digest string from outside (a manifest, a URL, an argument) goes through :func:`parse_digest`
before it is used to build any path, so ``sha256:../x`` can never reach the file system.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import blake3

from cache.errors import DigestMismatch, InvalidDigest, SizeMismatch

ALGORITHM = "sha256"
_PATTERN = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20  # 1 MiB: large enough that hashing releases the GIL, small enough to stay cheap


class Digest(str):
    """A checked sha256 digest: immutable, hashable, ordered. It is the string ``sha256:<hex>``
    itself, so hashing, comparing and sorting the hundreds of thousands of them in gc and prune run
    at C speed (a class with Python ``__hash__`` and ``__eq__`` cost a third of a prune's time)."""

    __slots__ = ()

    def __new__(cls, hex: str) -> Digest:
        # isinstance first: re.fullmatch raises TypeError, not InvalidDigest, on a non-str
        if not isinstance(hex, str) or not _HEX.fullmatch(hex):
            raise InvalidDigest(f"invalid sha256 hex {str(hex)[:80]!r}")
        return super().__new__(cls, f"{ALGORITHM}:{hex}")

    def __reduce__(self) -> tuple[type[Digest], tuple[str]]:  # copy and pickle by the hex
        return Digest, (self.hex,)

    @property
    def hex(self) -> str:  # type: ignore[override]  # str.hex does not exist; this is the digest's
        return self[len(ALGORITHM) + 1:]

    def __repr__(self) -> str:
        return f"Digest(hex={self.hex!r})"

    def __str__(self) -> str:
        return str.__str__(self)

    @property
    def short(self) -> str:
        return self.hex[:12]


def parse_digest(text: str) -> Digest:
    """Parse ``sha256:<64 lower-case hex>``; anything else raises :class:`InvalidDigest`."""
    if not isinstance(text, str):
        raise InvalidDigest(f"digest must be a string, not {type(text).__name__}")
    match = _PATTERN.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidDigest(f"invalid digest {shown!r}: expected sha256:<64 lower-case hex digits>")
    return str.__new__(Digest, text)  # checked just now: skip Digest's own check of the hex


def sha256_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


class Hasher:
    """sha256 and blake3 of one byte stream, fed chunk by chunk, with a byte count."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._blake3 = blake3.blake3()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.update_sha256(chunk)
        self.update_blake3(chunk)

    def update_sha256(self, chunk: bytes | memoryview) -> None:
        """The sha256 half of :meth:`update`, with the byte count: a writer may run the halves on two threads."""
        self._sha256.update(chunk)
        self.size += len(chunk)

    def update_blake3(self, chunk: bytes | memoryview) -> None:
        self._blake3.update(chunk)

    @property
    def digest(self) -> Digest:
        return Digest(self._sha256.hexdigest())

    @property
    def blake3(self) -> str:
        return self._blake3.hexdigest()


def check(expected: Digest, actual: Digest, expected_size: int | None, actual_size: int, what: str) -> None:
    """Raise a one-line error when the bytes of ``what`` are not the ones that were promised."""
    if expected_size is not None and expected_size != actual_size:
        raise SizeMismatch(f"{what}: expected {expected_size} bytes, got {actual_size}")
    if expected != actual:
        raise DigestMismatch(f"{what}: content has digest {actual}, expected {expected}")


def iter_chunks(stream: BinaryIO | Iterable[bytes], chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Yield the bytes of a file-like object or pass an iterable of byte chunks through."""
    read = getattr(stream, "read", None)
    if read is None:
        for chunk in stream:  # type: ignore[union-attr]
            if chunk:
                yield chunk
        return
    while True:
        chunk = read(chunk_size)
        if not chunk:
            return
        yield chunk


def hash_file(path: str, *, use_blake3: bool = False) -> str:
    """Hex sha256 (default) or blake3 of a whole file, read in large chunks."""
    with open(path, "rb") as handle:
        return hash_fd(handle.fileno(), os.fstat(handle.fileno()).st_size, use_blake3=use_blake3)


def hash_fd(fd: int, size: int, *, use_blake3: bool = False) -> str:
    """Hex sha256 (default) or blake3 of the file open as ``fd`` (``size`` bytes long), read with
    reads no bigger than the file: verify hashes 100,000 small blobs, and a 4 MiB read of each
    costs a 4 MiB allocation."""
    hasher = blake3.blake3() if use_blake3 else hashlib.sha256()
    step = max(1, min(4 * CHUNK, size))
    while chunk := os.read(fd, step):
        hasher.update(chunk)
    return hasher.hexdigest()
