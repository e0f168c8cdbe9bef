"""Eight processes pull (registry and daemon), scan, export, prune and gc at random on one cache for
LAYERHOARD_STRESS_SECONDS (default 180). Afterwards the store is sound, every listed image is
complete, and the only failures were clean "evicted, pull again" errors that the next call recovers from."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cache.store.blobstore import BlobStore
from tests.images import build_image, load_into_daemon, random_layer
from tests.lifecycle_support import REPO_ROOT, Pushed, assert_store_sound, push_images, run_cli, small_specs
from tests.services import Daemon, Registry

pytestmark = [pytest.mark.registry, pytest.mark.daemon, pytest.mark.slow]
SECONDS = float(os.environ.get("LAYERHOARD_STRESS_SECONDS", "180"))
WORKERS = 8
# What a command may say when prune or gc removed what it was using: all mean "fetch it again".
EVICTED = re.compile(r"evicted while in use|evicted from the cache while in use; fetch it again|"
                     r"is not in the cache|pull again")


@pytest.fixture(scope="module")
def sources(registry: Registry, dockerd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stress-images")
    pushed: dict[str, Pushed] = push_images(registry, root, "stress", small_specs(1100))
    base = random_layer(150_000, 1200)
    for name, layers in (("lh/stress-a:1", [base, random_layer(40_000, 1201)]),
                         ("lh/stress-b:1", [base, random_layer(30_000, 1202)])):
        image = build_image(root / name.replace("/", "-").replace(":", "-"), layers, tag="t")
        load_into_daemon(image.layout, "t", dockerd, name)
    return {**{f"registry-{k}": v.ref for k, v in pushed.items()},
            "daemon-a": "docker-daemon:lh/stress-a:1", "daemon-b": "docker-daemon:lh/stress-b:1"}


def operation(rng: random.Random, sources: dict[str, str], docker_host: str, scratch: Path) -> list[str]:
    registry_refs = [v for k, v in sources.items() if k.startswith("registry-")]
    daemon_refs = [v for k, v in sources.items() if k.startswith("daemon-")]
    kind = rng.choices(["pull", "daemon", "sbom", "export", "prune", "gc"], weights=[4, 2, 2, 2, 2, 1])[0]
    if kind == "pull":
        return ["pull", rng.choice(registry_refs)]
    if kind == "daemon":
        return ["pull", "--docker-host", docker_host, rng.choice(daemon_refs)]
    if kind == "sbom":
        return ["sbom", "--format", "json", "-o", str(scratch / f"sbom-{rng.randrange(10**9)}.json"),
                rng.choice(registry_refs)]
    if kind == "export":
        return ["export", rng.choice(registry_refs), f"oci:{scratch / f'layout-{rng.randrange(4)}'}:x"]
    if kind == "prune":
        limit = rng.choice([["--all"], ["--max-size", "300K"], ["--max-size", "1M"]])
        return ["prune", *limit, "--grace", rng.choice(["0s", "2s", "10m"])]
    return ["gc", "--grace", rng.choice(["0s", "5s"])]


def worker(seed: int, cache: Path, sources: dict[str, str], docker_host: str, scratch: Path,
           deadline: float) -> list[tuple[list[str], int, str]]:
    rng = random.Random(seed)
    results = []
    while time.monotonic() < deadline:
        args = operation(rng, sources, docker_host, scratch)
        done = subprocess.run([sys.executable, "-m", "cli.main", "-q", "--cache-dir", str(cache), *args],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        results.append((args, done.returncode, done.stderr.strip()))
    return results


def test_many_processes_at_random_on_one_cache(sources: dict[str, str], dockerd: Daemon, tmp_path: Path) -> None:
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    scratch.mkdir()
    deadline = time.monotonic() + SECONDS
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(worker, seed, cache, sources, dockerd.host, scratch, deadline)
                   for seed in range(WORKERS)]
        results = [entry for future in futures for entry in future.result()]

    failures = [(args, code, err) for args, code, err in results if code != 0]
    unexpected = [f for f in failures if f[1] != 1 or len(f[2].splitlines()) != 1 or not EVICTED.search(f[2])]
    assert unexpected == [], unexpected[:5]
    kinds = {args[0] for args, _, _ in results}
    assert {"pull", "sbom", "export", "prune", "gc"} <= kinds
    assert any("--docker-host" in args for args, _, _ in results)
    print(f"stress: {len(results)} commands in {SECONDS:.0f}s, {len(failures)} evicted-and-retry errors")

    store = BlobStore(cache)
    assert_store_sound(store)
    # every failed command works on the next call
    for args, _, _ in failures[:10]:
        again = run_cli(cache, *args)
        assert again.returncode == 0, (args, again.stderr)
    for source in sources.values():
        extra = ["--docker-host", dockerd.host] if source.startswith("docker-daemon:") else []
        assert run_cli(cache, "pull", *extra, source).returncode == 0
    assert run_cli(cache, "verify", "--full").returncode == 0
    assert_store_sound(store)
    store.close()
