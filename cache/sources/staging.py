"""Blobs written during one `docker save` stream, made visible only once the whole image checked out.

A stream can be cut off or turn out not to be a docker save after several layers went by; those
layers must not appear in blobs/ (nothing partial is visible). So each new blob is written and
hashed into a private file under the store's ingest/ folder, and :meth:`Staging.publish` moves it
into blobs/ with the store's own commit step (lock, look again, link, fsync) only at the end.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cache.digest import Digest, Hasher
from cache.store import BlobStore


@dataclass
class StagedBlob:
    path: Path
    digest: Digest
    size: int
    blake3: str
    media_type: str


class StagedWriter:
    """One blob being written: feed bytes, then :meth:`finish` for its digest."""

    def __init__(self, path: Path, media_type: str) -> None:
        self.path = path
        self.media_type = media_type
        self._hasher = Hasher()
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in finish() or by Staging.discard

    def write(self, data: bytes) -> None:
        if data:
            self._hasher.update(data)
            self._file.write(data)

    def finish(self) -> StagedBlob:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return StagedBlob(self.path, self._hasher.digest, self._hasher.size, self._hasher.blake3, self.media_type)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


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
        try:
            with self.store.lock(blob.digest):
                if self.store.has(blob.digest):
                    return False
                # The store's commit step; the bytes were hashed as they were written.
                self.store._publish(blob.path, blob.digest)
                self.store.index.record_blob(blob.digest, blob.size, blob.blake3, blob.media_type, source)
                return True
        finally:
            blob.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Drop every file this stream staged (after an error, or once published)."""
        for writer in self._writers:
            writer.close()
            writer.path.unlink(missing_ok=True)
        self._writers.clear()
