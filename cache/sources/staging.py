"""Blobs written during one `docker save` stream, made visible only once the whole image checked out.

A stream can be cut off or turn out not to be a docker save after several layers went by; those
layers must not appear in blobs/ (nothing partial is visible). So each new blob is written and
hashed into a private file under the store's ingest/ folder, and :meth:`Staging.publish` moves it
into blobs/ with the store's own commit step (lock, look again, link, fsync) only at the end.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cache.digest import Digest, Hasher
from cache.store import BlobStore


@dataclass
class StagedBlob:
    path: Path
    digest: Digest
    size: int
    blake3: str
    media_type: str


FLUSH_EVERY = 64 << 20


class _Flusher:
    """fdatasync a file in the background while it is still being written.

    The stream arrives slower than the disk writes, so flushing as we go leaves the final fsync
    (needed before a blob is published) almost nothing to do instead of a whole layer.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="layerhoard-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                return  # the final fsync reports any real problem

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()


class StagedWriter:
    """One blob being written: feed bytes, then :meth:`finish` for its digest."""

    def __init__(self, path: Path, media_type: str) -> None:
        self.path = path
        self.media_type = media_type
        self._hasher = Hasher()
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in finish() or by Staging.discard
        self._flusher: _Flusher | None = None
        self._unflushed = 0

    def write(self, data: bytes) -> None:
        if data:
            self._hasher.update(data)
            self._file.write(data)
            self._unflushed += len(data)
            if self._unflushed >= FLUSH_EVERY:
                self._unflushed = 0
                self._file.flush()
                if self._flusher is None:
                    self._flusher = _Flusher(self._file.fileno())
                self._flusher.poke()

    def finish(self) -> StagedBlob:
        self._stop_flusher()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return StagedBlob(self.path, self._hasher.digest, self._hasher.size, self._hasher.blake3, self.media_type)

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def close(self) -> None:
        self._stop_flusher()
        if not self._file.closed:
            self._file.close()


class BackgroundSink:
    """Compress (optionally) and write a staged blob on a second thread.

    The reading thread hashes the uncompressed stream while this one runs zstd, hashes the
    output and writes it: both release the GIL, so two cores share the work. At most
    ``QUEUE_CHUNKS`` chunks wait in between, so memory stays bounded.
    """

    QUEUE_CHUNKS = 8

    def __init__(self, writer: StagedWriter, compressor: Any | None = None) -> None:
        self._writer = writer
        self._compressor = compressor
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layerhoard-compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking chunks so the reading thread never blocks on a full queue
            try:
                self._writer.write(self._compressor.compress(chunk) if self._compressor is not None else chunk)
            except BaseException as error:
                self._error = error
        if self._error is None and self._compressor is not None:
            try:
                self._writer.write(self._compressor.flush())
            except BaseException as error:
                self._error = error

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def finish(self) -> StagedBlob:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._writer.finish()

    def abort(self) -> None:
        """Stop after an error in the reading thread; Staging.discard removes the file."""
        self._queue.put(None)
        self._thread.join()


class Staging:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._writers: list[StagedWriter] = []

    def writer(self, media_type: str) -> StagedWriter:
        writer = StagedWriter(self.store.ingest_dir / f"tmp-save-{uuid.uuid4().hex}", media_type)
        self._writers.append(writer)
        return writer

    def publish(self, blob: StagedBlob, source: str) -> bool:
        """Make a staged blob visible under its digest. True when written now, False when already there."""
        try:  # the bytes were hashed as they were written
            return self.store.adopt(blob.path, blob.digest, blob.size, blob.blake3, blob.media_type, source)
        finally:
            blob.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop every file this stream staged (after an error, or once published)."""
        for writer in self._writers:
            writer.close()
            writer.path.unlink(missing_ok=True)
        self._writers.clear()
