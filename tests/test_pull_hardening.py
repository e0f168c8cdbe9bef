"""Issue 14, the registry pull path: a speed floor, bad partial downloads, pulls racing a prune.

Faults a real registry will not produce (a slow drip, an HTML page then a cut) come from the small
misbehaving server in tests/faultserver.py; the race with prune runs the real CLI against the real
docker-registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cache.errors import ImageNotFound, LayerhoardError
from cache.model.digest import Digest, parse_digest
from cache.sbom import image_sbom
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.faultserver import FaultRegistry
from tests.images import TestImage
from tests.lifecycle_support import REPO_ROOT, Pushed, push_images, run_cli, small_specs
from tests.services import Registry
from tests.test_pull_faults import REPO, fast_pull, image, server

__all__ = ["image", "server"]


# -- 5. a transfer that stays under the speed floor is abandoned -----------------------------------
@pytest.mark.timeout(60)
def test_a_drip_fails_in_seconds_with_one_line(
    store: BlobStore, server: FaultRegistry, image: TestImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = image.layers[0].digest
    server.faults.drip[layer] = 100  # every try drips
    monkeypatch.setenv("LAYERHOARD_MIN_SPEED", "1K")
    monkeypatch.setenv("LAYERHOARD_MIN_SPEED_TIME", "1s")
    started = time.monotonic()
    with pytest.raises(LayerhoardError) as caught:
        fast_pull(store, server)
    took = time.monotonic() - started
    message = str(caught.value)
    assert "\n" not in message and layer in message and "1.0 KiB/s" in message, message
    assert took < 15, took  # four tries of about a second each, not a pull that never ends
    assert sum(1 for s in server.seen if s.path.endswith(layer)) == 4
    assert not store.has(parse_digest(layer)) and store.images() == []


@pytest.mark.parametrize("how", ["options", "environment"])
def test_a_drip_once_is_abandoned_and_resumed(
    tmp_path: Path, server: FaultRegistry, image: TestImage, how: str
) -> None:
    layer = image.layers[0].digest
    server.faults.drip[layer] = 1  # the first answer drips, the retry is healthy
    floor = ["--min-speed", "1K", "--min-speed-time", "1s"] if how == "options" else []
    env = {**os.environ, "LAYERHOARD_MIN_SPEED": "1K", "LAYERHOARD_MIN_SPEED_TIME": "1s"} if how == "environment" \
        else {k: v for k, v in os.environ.items() if not k.startswith("LAYERHOARD_MIN_SPEED")}
    started = time.monotonic()
    result = run_cli(tmp_path / "cache", "pull", f"{server.host}/{REPO}:1", *floor, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    ranges = [s.headers.get("Range") for s in server.seen if s.path.endswith(layer)]
    assert len(ranges) == 2 and ranges[0] is None  # abandoned, then resumed (or restarted) once


@pytest.mark.parametrize(("args", "message"), [
    (["--min-speed", "fast"], "--min-speed"),
    (["--min-speed-time", "soon"], "--min-speed-time"),
])
def test_a_bad_floor_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(tmp_path / "cache", "pull", "127.0.0.1:1/x:1", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_bad_floor_in_the_environment_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "LAYERHOARD_MIN_SPEED": "fast"}
    result = run_cli(tmp_path / "cache", "pull", "127.0.0.1:1/x:1", env=env)
    assert result.returncode == 1 and "LAYERHOARD_MIN_SPEED" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- 6. a bad partial download is discarded and fetched from zero ---------------------------------
def test_html_then_cut_leaves_no_partial_that_breaks_later_pulls(
    store: BlobStore, server: FaultRegistry, image: TestImage
) -> None:
    layer = image.layers[1]  # gzip: the HTML cannot be decompressed
    server.faults.html_then_cut[layer.digest] = 100  # the registry is broken for a while
    with pytest.raises(LayerhoardError):
        fast_pull(store, server)
    server.faults.html_then_cut.clear()  # healthy again
    report = fast_pull(store, server)
    assert report.digest == image.manifest_digest
    assert store.has(parse_digest(layer.digest))
    assert [p.name for p in store.ingest_dir.iterdir()] == []


def test_html_then_cut_once_is_recovered_by_the_same_pull(
    store: BlobStore, server: FaultRegistry, image: TestImage
) -> None:
    layer = image.layers[1]
    server.faults.html_then_cut[layer.digest] = 1  # the resume with Range is served properly
    report = fast_pull(store, server)
    assert report.layers[1].diff_id == layer.diff_id
    ranges = [s.headers.get("Range") for s in server.seen if s.path.endswith(layer.digest)]
    assert ranges[0] is None and ranges[-1] is None  # the bad partial was dropped: the last try is from zero


def test_a_partial_of_the_wrong_bytes_left_by_an_earlier_run_is_dropped(
    store: BlobStore, server: FaultRegistry, image: TestImage
) -> None:
    layer = image.layers[1]
    partial = store.ingest_dir / f"sha256-{layer.digest[7:]}"
    partial.write_bytes(b"\x1f\x8b" + bytes(1000))  # a gzip header, then bytes that are not the layer
    report = fast_pull(store, server)
    assert report.layers[1].diff_id == layer.diff_id and not partial.exists()


# -- 11. a pull racing a prune fetches what went; readers say "evicted" ---------------------------
class EvictedOnOpen(BlobStore):
    """A store where prune removes chosen blobs at the worst moment: after a pull saw them stored,
    just before it opens them (the real delete: lock, unlink, forget in the index)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.evict: set[Digest] = set()

    def open(self, digest: Digest):  # type: ignore[no-untyped-def]
        if digest in self.evict:
            self.evict.discard(digest)
            self.delete(digest)
        return super().open(digest)


def test_a_blob_evicted_between_check_and_use_is_fetched_again(
    tmp_path: Path, server: FaultRegistry, image: TestImage
) -> None:
    store = EvictedOnOpen(tmp_path / "cache")
    fast_pull(store, server)
    layer, config = parse_digest(image.layers[0].digest), parse_digest(image.config_digest)
    store.index.drop_blob(layer)  # its diff_id pair unknown: the pull reads the stored layer to check it
    store.evict = {layer, config}
    report = fast_pull(store, server)
    assert report.digest == image.manifest_digest and store.evict == set()
    assert store.has(layer) and store.has(config)
    assert not report.layers[0].reused
    store.close()


def test_a_manifest_evicted_before_a_pull_by_digest_reads_it_is_fetched_again(
    tmp_path: Path, server: FaultRegistry, image: TestImage
) -> None:
    store = EvictedOnOpen(tmp_path / "cache")
    fast_pull(store, server)
    store.evict = {parse_digest(image.manifest_digest)}  # a pull by digest answers from the store: not now
    report = fast_pull(store, server, image.manifest_digest)
    assert report.digest == image.manifest_digest and store.evict == set()
    assert any(s.path.endswith(f"/manifests/{image.manifest_digest}") for s in server.seen)
    store.close()


def test_export_and_sbom_of_an_image_evicted_under_them_say_fetch_it_again(
    store: BlobStore, server: FaultRegistry, image: TestImage, tmp_path: Path
) -> None:
    report = fast_pull(store, server)
    cached = load_image(store, report.ref)
    store.delete(parse_digest(image.layers[1].digest))  # prune, after the image was loaded
    with pytest.raises(ImageNotFound, match="evicted from the cache while in use; fetch it again"):
        export(store, cached, f"oci:{tmp_path / 'out'}")
    with pytest.raises(ImageNotFound, match="evicted from the cache while in use; fetch it again"):
        export(store, cached, f"docker-archive:{tmp_path / 'out.tar'}")
    with pytest.raises(ImageNotFound, match="evicted from the cache while in use; fetch it again"):
        image_sbom(cached)


@pytest.fixture(scope="module")
def race_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    return push_images(registry, tmp_path_factory.mktemp("race"), "race", small_specs(1400))


def test_pulls_racing_a_prune_loop_never_fail(race_images: dict[str, Pushed], tmp_path: Path) -> None:
    """Two loops of `pull` against a loop of `prune --max-size 100K` (less than any two images) on
    one cache, for RACE_SECONDS: every pull succeeds."""
    cache = tmp_path / "cache"
    assert run_cli(cache, "pull", race_images["a"].ref).returncode == 0
    prune = ["prune", "--max-size", "100K"]
    pruner = subprocess.Popen([sys.executable, "-c", LOOP, str(RACE_SECONDS), str(cache), *prune], cwd=REPO_ROOT)
    end = time.monotonic() + RACE_SECONDS

    def pulls(names: str) -> list[str]:
        failures = []
        while time.monotonic() < end:
            for name in names:
                result = run_cli(cache, "pull", race_images[name].ref)
                failures += [result.stderr.strip()] if result.returncode else []
        return failures

    try:
        with ThreadPoolExecutor(2) as pool:
            failures = [line for lines in pool.map(pulls, ["abc", "cba"]) for line in lines]
    finally:
        pruner.wait(30)
    assert failures == []


RACE_SECONDS = float(os.environ.get("LAYERHOARD_RACE_SECONDS", "10"))
LOOP = """import subprocess, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", sys.argv[2], *sys.argv[3:]],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
