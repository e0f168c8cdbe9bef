"""Staged blob files: O_DIRECT and buffered writers give the same bytes; the sink's zstd is the fixed one."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
from pathlib import Path

import blake3
import pytest

from cache.formats.compression import zstd_compressor
from cache.ingest.blobfile import ALIGN, DIRECT_BLOCK, BufferedFile, DirectFile, open_blob_file
from cache.sources.staging import BackgroundSink, StagedWriter
from cache.store.folder import Folder
from tests.images import random_layer

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, DIRECT_BLOCK - 1, DIRECT_BLOCK, DIRECT_BLOCK + 1, 3 * DIRECT_BLOCK + 12345]


def pieces(data: bytes) -> list[bytes]:
    """``data`` in uneven pieces, as zstd's output arrives."""
    out, position, step = [], 0, 1
    while position < len(data):
        out.append(data[position : position + step])
        position += step
        step = step * 7 % 1_500_001 + 1
    return out



def new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

@pytest.mark.parametrize("kind", [DirectFile, BufferedFile])
@pytest.mark.parametrize("size", SIZES)
def test_writers_store_exactly_the_bytes(tmp_path: Path, kind: type, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob"
    writer = kind(new_file(path))
    for piece in pieces(data):
        writer.write(memoryview(piece))
    writer.finish()
    assert path.read_bytes() == data
    writer.close()  # a second close after finish is harmless


def test_direct_io_where_the_file_system_allows_it(tmp_path: Path) -> None:
    writer = open_blob_file(new_file(tmp_path / "blob"))
    try:
        assert isinstance(writer, DirectFile)  # ext4 and tmpfs both take O_DIRECT on this kernel
    finally:
        writer.close()


@pytest.mark.parametrize("kind", [DirectFile, BufferedFile])
def test_close_without_finish_releases_everything(tmp_path: Path, kind: type) -> None:
    gc.collect()  # stores other tests left open close their folders when collected: not in the count
    before = len(os.listdir("/proc/self/fd"))
    writer = kind(new_file(tmp_path / "blob"))
    writer.write(os.urandom(DIRECT_BLOCK + 5))
    writer.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("buffer_bytes", [4096, 1 << 20])
def test_sink_output_is_the_fixed_zstd_encoding(tmp_path: Path, buffer_bytes: int) -> None:
    """Same layer, same compressed digest: the threaded sink equals one plain zstd stream."""
    layer = random_layer(3_000_000, 21) + random_layer(2_000_000, 22, compressible=True)
    reference = zstd_compressor().compressobj(size=-1)
    expected = reference.compress(layer) + reference.flush()
    writer = StagedWriter(Folder.at(tmp_path), "zstd")
    sink = BackgroundSink(writer, zstd_compressor(), buffer_bytes=buffer_bytes)
    position = 0
    while position < len(layer):
        buffer = sink.buffer()
        length = min(len(buffer), len(layer) - position)
        buffer[:length] = layer[position : position + length]
        sink.submit(buffer, length)
        position += length
    blob = sink.finish()
    assert writer.path.read_bytes() == expected
    assert blob.digest.hex == hashlib.sha256(expected).hexdigest()
    assert blob.blake3 == blake3.blake3(expected).hexdigest()
    assert blob.size == len(expected)


def test_small_blob_starts_no_thread(tmp_path: Path) -> None:
    """Images have many small layers: one below a block is written by finish() alone."""
    before = threading.active_count()
    writer = DirectFile(new_file(tmp_path / "small"))
    writer.write(os.urandom(DIRECT_BLOCK - 1))
    assert threading.active_count() == before
    writer.write(b"xy")  # the first block is full: now it is written in the background
    assert threading.active_count() > before
    writer.finish()
    assert threading.active_count() == before
    assert (tmp_path / "small").stat().st_size == DIRECT_BLOCK + 1
