"""A layer blob as a pull-style stream of its uncompressed tar, with bounded memory.

cache.formats.compression's writers are push-style: one write drains its whole input, so the output of a
single call grows with the compression ratio (a zstd RLE block turns 4 bytes into 128 KiB). tarfile
wants to pull, so this reader asks the decompressor for at most ``n`` bytes at a time instead and
memory stays near one output chunk whatever the layer holds. It uses the same gzip backend (isal
where installed) and the same corruption error as cache.formats.compression.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import zstandard

from cache.errors import LayerhoardError
from cache.formats.compression import CorruptLayer, fast_zlib

INPUT_CHUNK = 1 << 20


class _Gzip:
    """gzip members one after another (zero padding after the last is allowed)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflater: Any = fast_zlib.decompressobj(31)
        self._pending = b""
        self._started = False
        self._done = False

    def read(self, size: int) -> bytes:
        while not self._done:
            if self._inflater.eof:
                rest = self._inflater.unused_data + self._pending
                self._pending = b""
                if not rest:
                    rest = self._raw.read(INPUT_CHUNK)
                if not rest.strip(b"\0"):
                    if not rest:
                        self._done = True
                        return b""
                    continue  # padding: keep reading until the real end
                self._inflater = fast_zlib.decompressobj(31)
                self._pending = rest
            data = self._inflater.unconsumed_tail or self._pending
            self._pending = b""
            if not data:
                data = self._raw.read(INPUT_CHUNK)
                if not data:
                    if not self._started or not self._inflater.eof:
                        raise CorruptLayer("gzip data ends early (truncated layer)")
                    self._done = True
                    return b""
            self._started = True
            try:
                out: bytes = self._inflater.decompress(data, size)
            except Exception as error:  # zlib.error, or isal's own error type
                raise CorruptLayer(f"gzip data is corrupt: {error}") from None
            if out:
                return out
        return b""


class _Zstd:
    def __init__(self, raw: BinaryIO) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=INPUT_CHUNK, read_across_frames=True)

    def read(self, size: int) -> bytes:
        try:
            return bytes(self._reader.read(size))
        except zstandard.ZstdError as error:
            raise CorruptLayer(f"zstd data is corrupt: {error}") from None


class LayerStream:
    """File-like ``read(n)`` over the uncompressed bytes of a stored layer; counts what it produced."""

    def __init__(self, raw: BinaryIO, compression: str) -> None:
        if compression == "gzip":
            self._source: _Gzip | _Zstd | BinaryIO = _Gzip(raw)
        elif compression == "zstd":
            self._source = _Zstd(raw)
        elif compression == "none":
            self._source = raw
        else:
            raise LayerhoardError(f"unknown layer compression {compression!r}")
        self.uncompressed_bytes = 0

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else INPUT_CHUNK
        parts: list[bytes] = []
        got = 0
        while got < want:
            chunk = self._source.read(want - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self.uncompressed_bytes += got
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def readinto(self, buffer: Any) -> int:
        """For the tar reader (cache.formats.tar): fewer bytes than asked is fine, 0 is the end."""
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self.uncompressed_bytes += len(data)
        return len(data)
