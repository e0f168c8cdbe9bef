"""Writing a staged blob's bytes to its file, durably, with as little CPU as the file system allows.

Two ways, one interface (``write``, ``finish`` = everything on disk and the file closed, ``close``):

- :class:`DirectFile` (``O_DIRECT``): bytes are copied into page-aligned 4 MiB blocks that a
  thread of their own writes straight to the device. No copy into the page cache (on this kind of
  virtual machine that copy cost about 0.8 s of CPU per GiB, as much as zstd itself), no dirty
  pages to flush later; the blob is on disk as it streams. The tail that is not a whole 4 KiB is
  written after O_DIRECT is switched off.
- :class:`BufferedFile`: ordinary writes, fdatasync'd in the background every ``FLUSH_EVERY``
  bytes so the final fsync has little left to do. Used where O_DIRECT is refused (tmpfs, some
  network and FUSE file systems) or fails on the first write.

:func:`open_blob_file` picks the first that works.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import BinaryIO, Protocol

FLUSH_EVERY = 64 << 20
DIRECT_BLOCK = 4 << 20  # one device write: large enough to keep the disk streaming
DIRECT_BLOCKS = 4  # one being filled, the others waiting for or in a write
WRITERS = 2  # device writes in flight
ALIGN = 4096  # O_DIRECT wants offsets, lengths and memory aligned to the logical block (512 or 4096)
_NO_DIRECT = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


class BlobFile(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


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


class BufferedFile:
    """Ordinary buffered writes, flushed to disk in the background as they go."""

    def __init__(self, fd: int) -> None:
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._flusher: _Flusher | None = None
        self._unflushed = 0

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_EVERY:
            self._unflushed = 0
            self._file.flush()
            if self._flusher is None:
                self._flusher = _Flusher(self._file.fileno())
            self._flusher.poke()

    def finish(self) -> None:
        self._stop_flusher()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def close(self) -> None:
        self._stop_flusher()
        if not self._file.closed:
            self._file.close()


class DirectFile:
    """O_DIRECT writes of aligned blocks from threads of their own (see the module text).

    Two writes are kept in flight (a virtual disk takes them in parallel), and the file is
    fdatasync'd every ``FLUSH_EVERY`` bytes as with :class:`BufferedFile`: O_DIRECT skips the
    page cache but not the device's own cache, whose flush would otherwise all wait for the end.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._set_direct(True)  # OSError (EINVAL) where the file system refuses O_DIRECT
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._blocks = 1
        self._block = memoryview(mmap.mmap(-1, DIRECT_BLOCK))  # anonymous maps are page-aligned
        self._filled = 0
        self._offset = 0  # where the block being filled goes
        self._written = 0
        self._lock = threading.Lock()
        self._full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        # threads, the flusher and more blocks only once a first block is full: a blob smaller
        # than one block is written by finish() alone
        self._flusher: _Flusher | None = None
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        self._flusher = _Flusher(self._fd)
        self._threads = [threading.Thread(target=self._run, name="layerhoard-io", daemon=True) for _ in range(WRITERS)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            block, offset = item
            if self._error is None:  # after an error keep taking blocks so the writer never blocks
                try:
                    self._write_all(block, offset)
                    self._wrote(len(block))
                except BaseException as error:
                    self._error = error
            self._free.put(block)

    def _wrote(self, count: int) -> None:
        with self._lock:
            before = self._written
            self._written += count
            if before // FLUSH_EVERY != self._written // FLUSH_EVERY and self._flusher is not None:
                self._flusher.poke()

    def _write_all(self, view: memoryview, offset: int) -> None:
        while view:
            try:
                written = os.pwrite(self._fd, view, offset)
            except OSError as error:
                if error.errno not in _NO_DIRECT or not self._direct():
                    raise
                self._set_direct(False)  # the file system took the open but not the write
                continue
            view, offset = view[written:], offset + written

    def _direct(self) -> bool:
        return bool(fcntl.fcntl(self._fd, fcntl.F_GETFL) & os.O_DIRECT)

    def _set_direct(self, on: bool) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), DIRECT_BLOCK - self._filled)
            self._block[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == DIRECT_BLOCK:
                if self._error is not None:
                    raise self._error
                if not self._threads:
                    self._start()
                self._full.put((self._block, self._offset))
                self._offset += DIRECT_BLOCK
                self._block = self._next_block()
                self._filled = 0

    def _next_block(self) -> memoryview:
        if self._blocks < DIRECT_BLOCKS and self._free.empty():
            self._blocks += 1
            return memoryview(mmap.mmap(-1, DIRECT_BLOCK))
        return self._free.get()  # waits while every block is being written

    def _stop(self) -> None:
        if any(thread.is_alive() for thread in self._threads):
            for _ in self._threads:
                self._full.put(None)
            for thread in self._threads:
                thread.join()
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def finish(self) -> None:
        self._stop()
        if self._error is not None:
            raise self._error
        aligned = self._filled - self._filled % ALIGN
        self._write_all(self._block[:aligned], self._offset)
        if aligned < self._filled:
            self._set_direct(False)  # the last partial 4 KiB goes through the page cache
            self._write_all(self._block[aligned : self._filled], self._offset + aligned)
        os.fsync(self._fd)
        self.close()

    def close(self) -> None:
        self._stop()
        if not self._closed:
            self._closed = True
            os.close(self._fd)


def open_blob_file(fd: int) -> BlobFile:
    """Write the new, empty file open as ``fd`` (which the result closes): O_DIRECT where the file
    system allows it, else buffered writes."""
    if hasattr(os, "O_DIRECT"):
        try:
            return DirectFile(fd)
        except OSError as error:
            if error.errno not in _NO_DIRECT:
                os.close(fd)
                raise
    return BufferedFile(fd)
