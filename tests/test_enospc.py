"""A full disk during a pull: one clear line, nothing partial left, and the next pull works once
there is space. The cache lives on a 4 MiB tmpfs; the image is about 6 MB of random bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore
from tests.images import build_image, push, random_layer
from tests.lifecycle_support import assert_store_sound, run_cli
from tests.services import Registry

pytestmark = pytest.mark.registry


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        # the pull's background diff_id check may still hold the cache open: detach it anyway
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


def test_full_disk_leaves_nothing_and_next_pull_works(small_fs: Path, registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "big", [random_layer(300_000, 901), random_layer(6_000_000, 902)], tag="1")
    ref = push(image.layout, "1", registry, "enospc/big:1")
    cache = small_fs / "cache"

    failed = run_cli(cache, "pull", ref)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"layerhoard: error: no space left on the device of the cache {cache}")
    assert "free space" in lines[0]
    assert list((cache / "ingest").iterdir()) == []  # no partial write eating the space left
    store = BlobStore(cache)
    assert not store.has(parse_digest(image.layers[1].digest))
    assert store.images() == []
    assert_store_sound(store)
    store.close()

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    again = run_cli(cache, "--json", "pull", ref)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["digest"] == image.manifest_digest
    store = BlobStore(cache)
    assert_store_sound(store)
    assert len(store.images()) == 1
    store.close()
