"""A bad day in the cache folder (docs/security.md): FIFOs where files should be, a huge
index.json, the leftovers of a killed export. Every command ends, in one line, and nothing is lost."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache.store.blobstore import BlobStore
from tests.images import TestImage, build_image, random_layer
from tests.lifecycle_support import REPO_ROOT, assert_store_sound, run_cli

REF = "localhost/src:1"


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Path, TestImage]:
    image = build_image(tmp_path / "src", [random_layer(40_000, 71), random_layer(2_000_000, 72, True)], tag="1")
    cache = tmp_path / "cache"
    pulled = run_cli(cache, "pull", f"oci:{image.layout}:1")
    assert pulled.returncode == 0, pulled.stderr
    return cache, image


def test_a_fifo_in_ingest_does_not_hang_gc(cached: tuple[Path, TestImage]) -> None:
    cache, _ = cached
    fifo = cache / "ingest" / "tmp-save-planted"
    os.mkfifo(fifo)
    os.utime(fifo, (1, 1))
    done = run_cli(cache, "--json", "gc", "--grace", "0s", timeout=30)  # hung forever before
    assert done.returncode == 0, done.stderr
    assert not fifo.exists()


@pytest.mark.parametrize("command", [("verify", "--full"), ("verify", "--fast"), ("sbom", REF),
                                     ("export", REF, "docker-archive:{out}"), ("export", REF, "oci:{out}:x")])
def test_a_fifo_in_place_of_a_blob_hangs_no_reader(cached: tuple[Path, TestImage], tmp_path: Path,
                                                   command: tuple[str, ...]) -> None:
    cache, image = cached
    blob = cache / "blobs" / "sha256" / image.layers[1].digest[7:]
    blob.unlink()
    os.mkfifo(blob)
    args = [arg.format(out=tmp_path / "out") for arg in command]
    done = run_cli(cache, *args, timeout=30)  # verify --full and docker-archive export hung before
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) <= 1
    if command[0] == "verify":
        assert image.layers[1].digest in done.stdout and not blob.exists()  # moved aside as damage
    else:
        assert "FIFO" in done.stderr, done.stderr


def test_an_oversized_index_json_is_refused_in_one_line(cached: tuple[Path, TestImage]) -> None:
    cache, _ = cached
    index = cache / "index.json"
    with open(index, "r+b") as handle:  # valid JSON, padded past the limit with spaces
        handle.seek(0, os.SEEK_END)
        handle.write(b" " * (65 << 20))
    done = run_cli(cache, "ls", timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "index.json is" in done.stderr and "bytes" in done.stderr


def test_a_killed_export_leaves_no_leftover_after_the_next(cached: tuple[Path, TestImage], tmp_path: Path) -> None:
    cache, _ = cached
    out = tmp_path / "exports" / "image.tar"
    out.parent.mkdir()
    # what a SIGKILLed export leaves, and what one still running holds
    leftover = out.parent / ".image.tar.k1ll3d.tmp"
    leftover.write_bytes(b"half an export" * 1000)
    concurrent = out.parent / ".image.tar.running.tmp"  # another export still writing: locked
    concurrent.write_bytes(b"in progress")
    with open(concurrent, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        done = run_cli(cache, "export", REF, f"docker-archive:{out}")
        assert done.returncode == 0, done.stderr
        assert concurrent.exists()
    assert not leftover.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [".image.tar.running.tmp", "image.tar"]


def test_an_export_killed_for_real_is_cleaned_by_the_next(cached: tuple[Path, TestImage], tmp_path: Path) -> None:
    cache, _ = cached
    out = tmp_path / "image.tar"
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "export", REF,
                                f"docker-archive:{out}"], cwd=REPO_ROOT)
    deadline = time.monotonic() + 20
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = run_cli(cache, "export", REF, f"docker-archive:{out}")
    assert done.returncode == 0, done.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    store = BlobStore(cache)
    assert_store_sound(store)
    store.close()
