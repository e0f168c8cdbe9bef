"""The images bench/pull.py pulls, written as OCI layouts with plain tarfile, gzip and json.

Two kinds, so a figure says which image it holds for:
- ``synthetic``: one file per layer, layers alternately random and highly compressible text, gzip
  level 1 (the bench's image since issue 3).
- ``real``: what users pull (issue 19): two layers of real files from /usr/lib and /usr/share, two
  of half-random data (each file half random bytes, half text), gzip level 6 as docker and
  skopeo write it. Its layers are compressed in parallel processes (gzip -6 of 1 GiB takes about
  40 s on one core).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from isal import igzip

from tests.images import OCI_CONFIG, OCI_MANIFEST, LayoutWriter

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
FILE_SIZE = 1 << 20  # one file of a half-random layer


def synthetic_tar(size: int, seed: int, compressible: bool) -> bytes:
    """A tar of one file of ``size`` bytes, built without tarfile's per-byte overhead."""
    rng = random.Random(seed)
    if compressible:
        block = b" ".join(bytes(rng.choice(b"abcdefghij") for _ in range(8)) for _ in range(8192))
        content = (block * (size // len(block) + 1))[:size]
    else:  # randbytes of more than 256 MB overflows: join smaller pieces
        content = b"".join(rng.randbytes(min(1 << 26, size - i)) for i in range(0, size, 1 << 26))
    return _tar([(f"bench/layer{seed}.bin", content)])


def _tar(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _real_files(folder: Path) -> Iterator[Path]:
    """Regular, readable files under ``folder`` in a stable order (links and special files left out)."""
    for root, folders, names in os.walk(folder):
        folders.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
                yield path


def real_files_tar(folder: str, size: int) -> bytes:
    """A tar of the first files under ``folder`` (walked in order) holding about ``size`` bytes."""
    files, total = [], 0
    for path in _real_files(Path(folder)):
        try:
            content = path.read_bytes()
        except OSError:
            continue
        if total + len(content) > size:
            if len(content) > size // 8:
                continue  # one huge file would make the layer lopsided: take the next ones
            break
        files.append((str(path).lstrip("/"), content))
        total += len(content)
    return _tar(files)


def half_random_tar(size: int, seed: int) -> bytes:
    """Files of ``FILE_SIZE`` bytes, each half random bytes and half words of text."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)]
    files = []
    for i in range(size // FILE_SIZE):
        text = b" ".join(rng.choices(words, k=FILE_SIZE // 10))[: FILE_SIZE // 2]
        files.append((f"data/{seed}/{i:05}.bin", rng.randbytes(FILE_SIZE // 2) + text))
    return _tar(files)


def _layer(kind: str, size: int, index: int) -> tuple[bytes, str, int]:
    """One layer's gzip blob, its diff_id and its tar's size (runs in a worker process)."""
    if kind == "synthetic":
        tar = synthetic_tar(size, 1000 + index, compressible=index % 2 == 1)
        blob = igzip.compress(tar, 1)
    else:
        sources = {0: "/usr/lib", 1: "/usr/share"}
        tar = real_files_tar(sources[index], size) if index in sources else half_random_tar(size, 2000 + index)
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing, level 6
        blob = compressor.compress(tar) + compressor.flush()
    return blob, "sha256:" + hashlib.sha256(tar).hexdigest(), len(tar)


def build_layout(root: Path, kind: str, total: int, layers: int) -> tuple[int, int]:
    """Write the image ``bench`` of ``kind`` into the OCI layout ``root``; (tar bytes, gzip bytes)."""
    writer = LayoutWriter(root)
    with ProcessPoolExecutor(min(layers, os.cpu_count() or 1)) as pool:
        built = list(pool.map(_layer, [kind] * layers, [total // layers] * layers, range(layers)))
    descriptors = [{"mediaType": GZIP_LAYER, "digest": writer.blob(blob), "size": len(blob)} for blob, _, _ in built]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id, _ in built]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": writer.blob(config), "size": len(config)},
                           "layers": descriptors}).encode()
    writer.tag("bench", OCI_MANIFEST, writer.blob(manifest), len(manifest))
    return sum(size for _, _, size in built), sum(len(blob) for blob, _, _ in built)
