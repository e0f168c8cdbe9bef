"""Blobs written during one `docker save` stream, made visible only once the whole image checked out.

A stream can be cut off or turn out not to be a docker save after several layers went by; those
layers must not appear in blobs/ (nothing partial is visible). So each new blob is written and
hashed into a private file under the store's ingest/ folder, and :meth:`Staging.publish` moves it
into blobs/ with the store's own commit step (lock, look again, link, fsync) only at the end.
"""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from cache.ingest.blobfile import open_blob_file
from cache.model.digest import Digest, Hasher
from cache.store.blobstore import BlobStore
from cache.store.folder import Folder
from cache.store.fsutil import InUse


@dataclass
class StagedBlob:
    path: Path
    digest: Digest
    size: int
    blake3: str
    media_type: str


ZSTD_WRITE_BYTES = 1 << 20  # zstd output per write: fewer, larger hash updates and file writes


class StagedWriter:
    """One blob being written into ingest/: feed bytes, then :meth:`finish` for its digest.
    The file is made and marked in use at once (gc leaves it alone); :meth:`close` removes it."""

    def __init__(self, ingest: Folder, media_type: str) -> None:
        self.in_use = InUse(ingest, f"tmp-save-{uuid.uuid4().hex}")
        self.path = self.in_use.path
        self.media_type = media_type
        self._hasher = Hasher()
        self._file = open_blob_file(self.in_use.writable())

    def write(self, data: bytes | memoryview) -> int:
        """Hash and write ``data``; returns its length (zstd's stream writer wants a count)."""
        if data:
            self._hasher.update(data)
            self._file.write(data)
        return len(data)

    def finish(self) -> StagedBlob:
        self._file.finish()
        return StagedBlob(self.path, self._hasher.digest, self._hasher.size, self._hasher.blake3, self.media_type)

    def close(self) -> None:
        """Close and remove the file (a published blob lives on under its own name in blobs/)."""
        self._file.close()
        self.in_use.close()


BUFFER_BYTES = 1 << 20  # one read: large enough that hashing and zstd release the GIL for long
BUFFERS = 2  # buffers in flight to the compressing thread, which hands each to zstd's jobs at once (memory bound)
WRITE_QUEUE = 4  # zstd output chunks waiting for the writing thread (memory bound)


class _WritingThread:
    """Hash (sha256 + blake3) and write zstd's output on a third thread.

    Compression, output hashing and writing together cost about twice the CPU per byte of
    reading and hashing the input, so the compressing thread hands its output on rather than
    doing all three. The chunks are zstd's own immutable bytes, handed over without a copy.
    """

    def __init__(self, writer: StagedWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layerhoard-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:  # after an error keep taking chunks so the sender never blocks
                try:
                    self._writer.write(chunk)
                except BaseException as error:
                    self._error = error

    def write(self, chunk: bytes) -> int:
        """zstd's stream writer calls this with each piece of output."""
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)
        return len(chunk)

    def close(self) -> None:
        """Wait until every chunk is written; raise what went wrong."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class BackgroundSink:
    """Compress (optionally) and write a staged blob on other threads, from reused buffers.

    The reading thread takes a free buffer (:meth:`buffer`), fills it straight from the stream,
    hashes it and hands it over (:meth:`submit`); the compressing thread runs zstd on it and gives
    the buffer back, and a writing thread hashes and writes zstd's output. hashlib, zstd, blake3
    and file writes release the GIL, so the cores share the work. At most ``BUFFERS`` buffers are
    made (on demand) and then reused, so reads never fault in fresh memory and memory stays
    bounded. Without a compressor the bytes are written as they are.
    """

    def __init__(self, writer: StagedWriter, compressor: Any | None = None, buffer_bytes: int = BUFFER_BYTES) -> None:
        self._writer = writer
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._buffer_bytes = buffer_bytes
        self._buffers = 0  # made so far: a small layer never needs more than one
        self._full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self._output = _WritingThread(writer) if compressor is not None else None
        self._zstd = (
            compressor.stream_writer(self._output, write_size=ZSTD_WRITE_BYTES, closefd=False)
            if compressor is not None else None
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layerhoard-compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, length = item
            if self._error is None:  # after an error keep taking buffers so the reader never blocks
                try:
                    if self._zstd is not None:
                        self._zstd.write(buffer[:length])
                    else:
                        self._writer.write(buffer[:length])
                except BaseException as error:
                    self._error = error
            self._free.put(buffer)
        try:
            if self._error is None and self._zstd is not None:
                self._zstd.flush(zstandard.FLUSH_FRAME)
        except BaseException as error:
            self._error = error
        finally:
            if self._output is not None:
                try:
                    self._output.close()
                except BaseException as error:
                    self._error = self._error or error

    def buffer(self) -> memoryview:
        """A free buffer to fill; waits while every buffer is still being compressed."""
        if self._error is not None:
            raise self._error
        if self._buffers < BUFFERS and self._free.empty():
            self._buffers += 1
            return memoryview(bytearray(self._buffer_bytes))
        return self._free.get()

    def submit(self, buffer: memoryview, length: int) -> None:
        """Hand over the first ``length`` bytes of a buffer from :meth:`buffer`; it comes back free."""
        self._full.put((buffer, length))

    def finish(self) -> StagedBlob:
        self._full.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._writer.finish()

    def abort(self) -> None:
        """Stop after an error in the reading thread; Staging.discard removes the file."""
        self._full.put(None)
        self._thread.join()


class Staging:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._writers: dict[Path, StagedWriter] = {}  # by file, until published or dropped

    def writer(self, media_type: str) -> StagedWriter:
        writer = StagedWriter(self.store.ingest_folder, media_type)
        self._writers[writer.path] = writer
        return writer

    def publish(self, blob: StagedBlob, source: str) -> bool:
        """Make a staged blob visible under its digest. True when written now, False when already there."""
        writer = self._writers.pop(blob.path)
        try:  # the bytes were hashed as they were written
            return self.store.adopt(writer.in_use, blob.digest, blob.size, blob.blake3, blob.media_type, source)
        finally:
            writer.close()

    def discard(self) -> None:
        """Drop every file this stream staged (after an error, or once published)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
