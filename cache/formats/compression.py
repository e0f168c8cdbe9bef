"""Layer compression: diff_ids computed while bytes stream, and our one fixed zstd encoding.

Decompression never holds a whole layer: output goes to a sink in chunks of at most
``OUTPUT_CHUNK`` bytes, so a small compressed input that expands enormously (a "zip bomb") costs
time, not memory. gzip goes through isal where it is installed (about 3x zlib here), else zlib.
"""

from __future__ import annotations

import hashlib
import types
import zlib
from collections.abc import Callable
from typing import Any

import zstandard

from cache.errors import LayerhoardError
from cache.model.digest import Digest

fast_zlib: types.ModuleType
try:  # isal ships wheels for x86_64 and aarch64 only
    from isal import isal_zlib as fast_zlib
except ImportError:  # pragma: no cover - exercised only where isal is missing
    fast_zlib = zlib

OUTPUT_CHUNK = 1 << 20
# The fixed parameters of every zstd layer we make: one uncompressed layer, one digest, always.
ZSTD_LEVEL = 3


class CorruptLayer(LayerhoardError):
    """A layer whose compressed bytes do not decompress."""


Sink = Callable[[bytes], Any]


class _GzipStream:
    """gzip (possibly several members) → sink, with bounded output per step."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._inflater: Any = fast_zlib.decompressobj(31)
        self._started = False

    def write(self, data: bytes) -> None:
        while data:
            if self._inflater.eof:  # the previous member ended: a new one starts here
                if not data.strip(b"\0"):
                    return  # zero padding after the last member is allowed
                self._inflater = fast_zlib.decompressobj(31)
            self._started = True
            try:
                self._sink_bounded(data)
            except Exception as error:  # zlib.error, or isal's own error type
                raise CorruptLayer(f"gzip data is corrupt: {error}") from None
            data = self._inflater.unused_data if self._inflater.eof else b""

    def _sink_bounded(self, data: bytes) -> None:
        out = self._inflater.decompress(data, OUTPUT_CHUNK)
        while True:
            if out:
                self._sink(out)
            tail = self._inflater.unconsumed_tail
            if not tail or self._inflater.eof:
                return
            out = self._inflater.decompress(tail, OUTPUT_CHUNK)

    def close(self) -> None:
        if not self._started or not self._inflater.eof:
            raise CorruptLayer("gzip data ends early (truncated layer)")


class _ZstdStream:
    def __init__(self, sink: Sink) -> None:
        self._sink = _SinkFile(sink)
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            self._sink,  # type: ignore[arg-type]  # any object with write() will do
            write_size=OUTPUT_CHUNK,
            write_return_read=True,
            closefd=False,
        )
        self._seen = 0

    def write(self, data: bytes) -> None:
        self._seen += len(data)
        try:
            self._writer.write(data)
        except zstandard.ZstdError as error:
            raise CorruptLayer(f"zstd data is corrupt: {error}") from None

    def close(self) -> None:
        try:
            self._writer.flush()  # type: ignore[no-untyped-call]
        except zstandard.ZstdError as error:
            raise CorruptLayer(f"zstd data is corrupt: {error}") from None
        if self._seen == 0:
            raise CorruptLayer("zstd data is empty")


class _PlainStream:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink(data)

    def close(self) -> None:
        pass


class _SinkFile:
    """The minimal file object zstandard's stream_writer writes into."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def decompressing(compression: str, sink: Sink) -> _GzipStream | _ZstdStream | _PlainStream:
    """A writer that decompresses what it is given ("gzip", "zstd" or "none") into ``sink``."""
    if compression == "gzip":
        return _GzipStream(sink)
    if compression == "zstd":
        return _ZstdStream(sink)
    if compression == "none":
        return _PlainStream(sink)
    raise LayerhoardError(f"unknown layer compression {compression!r}")


class DiffIdHasher:
    """Feed compressed layer bytes; get the sha256 of the uncompressed tar (the diff_id)."""

    def __init__(self, compression: str) -> None:
        self._sha = hashlib.sha256()
        self.uncompressed_size = 0
        self._stream = decompressing(compression, self._take)

    def _take(self, data: bytes) -> None:
        self._sha.update(data)
        self.uncompressed_size += len(data)

    def update(self, chunk: bytes | memoryview) -> None:
        self._stream.write(bytes(chunk))

    def finish(self) -> Digest:
        self._stream.close()
        return Digest(self._sha.hexdigest())


def zstd_compressor() -> zstandard.ZstdCompressor:
    """The one zstd encoder layerhoard writes layers with (same input, same bytes)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=False, threads=0)
