"""SIGKILL at a random moment (0 to 0.5 s) during pulls, prune and gc, 120 times.

The pulls are every way in through the one commit path (cache/ingest/commit.py): a registry
image, a two-platform index with --all-platforms, an OCI layout's index, and a daemon image.
After every kill: index.json parses, no name points at a graph with a missing blob, every blob
hashes to its name (nothing partial is visible), and the same command then succeeds. At the end gc removes the
leftovers and a final pull works. Commands run in forked children (the code already loaded), so a
kill lands in the work itself rather than in interpreter start-up.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import cache.sources.daemon  # noqa: F401 - loaded before forking, like everything the children run
import cli.commands.lifecycle
import cli.commands.maintenance
import cli.commands.pull  # noqa: F401
from cache.store.blobstore import BlobStore
from cache.upkeep.gc import gc
from cli.main import main
from tests.images import build_image, build_index, load_into_daemon, push, random_layer
from tests.lifecycle_support import assert_store_sound, push_images, run_cli
from tests.services import Daemon, Registry

pytestmark = [pytest.mark.registry, pytest.mark.daemon, pytest.mark.slow]
RUNS = 120
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def sources(registry: Registry, dockerd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("crash-images")
    base = random_layer(4_000_000, 1300)
    pushed = push_images(registry, root, "crash", {
        "a": [base, random_layer(2_000_000, 1301)],
        "b": [base, random_layer(1_500_000, 1302), random_layer(30_000, 1303)],
    })
    image = build_image(root / "daemon", [random_layer(3_000_000, 1304), random_layer(500_000, 1305)], tag="t")
    load_into_daemon(image.layout, "t", dockerd, "lh/crash:1")
    platforms = [("linux", "amd64"), ("linux", "arm64")]
    layout = root / "multi"
    images = [build_image(layout, [base, random_layer(2_500_000, 1306 + i)], tag=f"p{i}", platform=platform,
                          write_tag=False) for i, platform in enumerate(platforms)]
    build_index(layout, images, platforms, "multi")
    multi = push(layout, "multi", registry, "crash/multi:1", all_platforms=True)
    return {"registry": [p.ref for p in pushed.values()], "daemon": ["docker-daemon:lh/crash:1"],
            "multi": [multi], "layout": [f"oci:{layout}:multi"]}


def _child(cache: str, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--cache-dir", cache, "-q", *args])
    os._exit(result.exit_code)


def run_forked(cache: Path, args: list[str], kill_after: float | None) -> int | None:
    """Run the command in a forked child; SIGKILL it after ``kill_after`` seconds. Its exit code,
    or None when it was killed."""
    child = FORK.Process(target=_child, args=(str(cache), args))
    child.start()
    child.join(kill_after)
    if child.exitcode is None:
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        return None
    return child.exitcode


def test_sigkill_at_random_moments(sources: dict[str, list[str]], dockerd: Daemon, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    rng = random.Random(1234)
    killed = 0
    started = time.monotonic()
    commands = {
        "pull": lambda: ["pull", rng.choice(sources["registry"])],
        "daemon": lambda: ["pull", "--docker-host", dockerd.host, sources["daemon"][0]],
        "multi": lambda: ["pull", "--all-platforms", sources["multi"][0]],
        "layout": lambda: ["pull", sources["layout"][0]],
        "prune": lambda: ["prune", "--all", "--grace", "0s"],
        "gc": lambda: ["gc", "--grace", "0s"],
    }
    # How long each command takes here when it has work to do, so the kill moment (at most 0.5 s)
    # falls inside it: a kill after the command ended would test nothing.
    took = {}
    for kind in ("pull", "daemon", "multi", "layout", "gc", "pull", "prune"):
        begun = time.monotonic()
        assert run_forked(cache, commands[kind](), None) == 0, kind
        took[kind] = min(0.5, time.monotonic() - begun)
    for run in range(RUNS):
        kind = ("pull", "daemon", "prune", "multi", "gc", "layout")[run % 6]
        args = commands[kind]()
        if kind in ("pull", "daemon", "multi", "layout") and rng.random() < 0.8:  # mostly something to fetch
            assert run_forked(cache, ["prune", "--all", "--grace", "0s"], None) == 0
        elif kind == "prune":  # something to delete
            assert run_forked(cache, commands["pull"](), None) == 0
        code = run_forked(cache, args, rng.uniform(0, took[kind]))
        killed += code is None
        assert code in (None, 0), (run, args, code)
        store = BlobStore(cache)
        assert_store_sound(store)
        store.close()
        assert run_forked(cache, args, None) == 0, (run, args)  # the next run of the same command works
    assert killed >= RUNS // 2, killed  # most runs really were cut off
    store = BlobStore(cache)
    gc(store, grace=0)
    assert list(store.ingest_dir.iterdir()) == []
    store.close()
    for ref in sources["registry"]:
        assert run_cli(cache, "pull", ref).returncode == 0
    assert run_cli(cache, "verify", "--full").returncode == 0
    store = BlobStore(cache)
    assert_store_sound(store)
    store.close()
    print(f"crash: {RUNS} runs, {killed} killed, {time.monotonic() - started:.0f}s")
