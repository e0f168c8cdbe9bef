"""Compression, in one place: diff_ids computed while bytes stream, our one fixed zstd encoding,
and the readers that decompress a stream for the tar reader.

Two shapes, one per kind of caller. Push: :func:`decompressing` is a writer fed compressed chunks
as they arrive from the network (the diff_id while a layer downloads). Pull:
:class:`DecompressingReader` is read from, for the tar reader (an SBOM scan, a compressed
docker-archive). Neither holds a whole layer: output comes in chunks of at most ``OUTPUT_CHUNK``
(push) or of the size asked (pull), so a small input that expands enormously (a "zip bomb")
costs time, not memory. gzip goes through isal where it is installed (about 3x zlib here), else
zlib.
"""

from __future__ import annotations

import hashlib
import os
import types
import zlib
from collections.abc import Callable
from typing import Any, Protocol

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
# zstd's multi-threaded encoder cuts its input into jobs of a fixed size; its output depends on the
# level and that size, never on how many threads run the jobs or how the input is fed
# (tests/test_compression.py pins this), so one layer spreads over the cores and keeps one digest.
# Level 1, not 3: a daemon pull is bound by CPU, and on real files level 1 costs half of level 3's
# time for blobs 7% larger than the gzip -6 a registry sends (docs/daemon.md, "The zstd encoding").
ZSTD_LEVEL = 1
ZSTD_JOB_BYTES = 1 << 20  # zstd's smallest useful job: little memory per worker, the same ratio
ZSTD_MAX_THREADS = 4  # 4 at ~0.35 GB/s each keep up with the layer's sha256 (1.4 GB/s), the pace setter


class CorruptLayer(LayerhoardError):
    """A layer whose compressed bytes do not decompress."""


class TruncatedLayer(CorruptLayer):
    """Compressed bytes that end before their stream does (a cut-off download or file)."""


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
            raise TruncatedLayer("gzip data ends early (truncated layer)")


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


def zstd_compressor(threads: int | None = None) -> zstandard.ZstdCompressor:
    """The one zstd encoder layerhoard writes layers with (same input, same bytes), on ``threads``
    workers (default: the cores this process may use, at most ``ZSTD_MAX_THREADS``)."""
    if threads is None:
        threads = min(len(os.sched_getaffinity(0)), ZSTD_MAX_THREADS)
    parameters = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, threads=max(1, threads), job_size=ZSTD_JOB_BYTES, write_checksum=0, write_content_size=0
    )
    return zstandard.ZstdCompressor(compression_params=parameters)


# -- pull: read uncompressed bytes from a compressed stream -------------------------------------
INPUT_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _GzipReader:
    """gzip members one after another (zero padding after the last is allowed)."""

    def __init__(self, raw: Readable) -> None:
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
                        raise TruncatedLayer("gzip data ends early (truncated layer)")
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


class _ZstdReader:
    def __init__(self, raw: Readable) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=INPUT_CHUNK, read_across_frames=True  # type: ignore[arg-type]  # read() suffices
        )

    def read(self, size: int) -> bytes:
        try:
            return bytes(self._reader.read(size))
        except zstandard.ZstdError as error:
            raise CorruptLayer(f"zstd data is corrupt: {error}") from None


class _ArchiveReader:
    """bzip2 or xz: only docker-archive tarballs come compressed this way, never a layer."""

    def __init__(self, raw: Readable, kind: str) -> None:
        import bz2  # only for the rare compressed tarball: a cached pull never needs them
        import lzma

        self._raw = raw
        self._kind = kind
        self._errors = (OSError, EOFError, lzma.LZMAError)
        self._inflater: Any = bz2.BZ2Decompressor() if kind == "bzip2" else lzma.LZMADecompressor()
        self._pending = b""

    def read(self, size: int) -> bytes:
        while not self._inflater.eof:
            try:  # an empty input still gives output the last call held back (bounded by ``size``)
                out: bytes = self._inflater.decompress(self._pending, size)
            except self._errors as error:
                raise CorruptLayer(f"{self._kind} data is corrupt: {error}") from None
            self._pending = b""
            if out:
                return out
            if self._inflater.needs_input:
                self._pending = self._raw.read(INPUT_CHUNK)
                if not self._pending:
                    raise TruncatedLayer(f"the {self._kind} stream ends early")
        return b""


class DecompressingReader:
    """File-like ``read(n)`` and ``readinto`` over the uncompressed bytes of ``raw``, compressed as
    ``compression`` says ("gzip", "zstd", "bzip2", "xz" or "none"); counts what it produced."""

    def __init__(self, raw: Readable, compression: str) -> None:
        if compression == "gzip":
            self._source: Readable = _GzipReader(raw)
        elif compression == "zstd":
            self._source = _ZstdReader(raw)
        elif compression in ("bzip2", "xz"):
            self._source = _ArchiveReader(raw, compression)
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
