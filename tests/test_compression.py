"""The one fixed zstd encoding: one uncompressed layer gives one compressed digest, however many
threads ran zstd and however the bytes were fed to it."""

from __future__ import annotations

import hashlib

import pytest
import zstandard

from cache.formats.compression import ZSTD_JOB_BYTES, zstd_compressor
from tests.images import random_layer

# Several jobs' worth, compressible and not, so the workers really split it.
LAYER = random_layer(3 * ZSTD_JOB_BYTES, 31) + random_layer(4 * ZSTD_JOB_BYTES + 12345, 32, compressible=True)


def _through_compressobj(threads: int, step: int) -> bytes:
    encoder = zstd_compressor(threads).compressobj(size=-1)
    pieces = [encoder.compress(LAYER[i : i + step]) for i in range(0, len(LAYER), step)]
    return b"".join(pieces) + encoder.flush()


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


def _through_stream_writer(threads: int, step: int) -> bytes:
    out = _Collect()
    writer = zstd_compressor(threads).stream_writer(out, write_size=1 << 20, closefd=False)
    for i in range(0, len(LAYER), step):
        writer.write(LAYER[i : i + step])
    writer.flush(zstandard.FLUSH_FRAME)
    return bytes(out.data)


def test_output_does_not_depend_on_threads_or_feeding() -> None:
    expected = _through_compressobj(1, len(LAYER))
    assert zstandard.ZstdDecompressor().decompress(expected, max_output_size=len(LAYER)) == LAYER
    for threads in (1, 2, 3, 4):
        for step in (4096, 65_537, 1 << 20):
            assert _through_compressobj(threads, step) == expected, (threads, step)
            assert _through_stream_writer(threads, step) == expected, (threads, step)
    default = zstd_compressor().compressobj(size=-1)  # as many threads as this machine gives
    assert default.compress(LAYER) + default.flush() == expected


def test_frame_has_no_checksum_and_no_size() -> None:
    """The frame says nothing that depends on how it was made (a size known up front or not)."""
    frame = _through_compressobj(2, 1 << 20)
    parameters = zstandard.get_frame_parameters(frame)
    assert parameters.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert not parameters.has_checksum


@pytest.mark.parametrize("threads", [1, 2])
def test_encoding_is_the_recorded_one(threads: int) -> None:
    """A tripwire for an upgrade of zstd or of these parameters: either gives every new daemon layer
    a new digest (docs/daemon.md, "The zstd encoding"). Change the digest here only on purpose."""
    frame = _through_compressobj(threads, 1 << 20)
    assert hashlib.sha256(frame).hexdigest() == GOLDEN, f"zstd {zstandard.ZSTD_VERSION} encodes differently"


GOLDEN = "458fbee0640086e37f1ec181389a87b593e9ec8570c887a65517df9bb548712b"  # zstd 1.5.7 (zstandard 0.25)
