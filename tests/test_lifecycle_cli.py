"""prune, pin, unpin, config, stats and gc --rebuild-index from the command line, with real pulls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore
from cli.main import main
from tests.lifecycle_support import (
    Pushed,
    assert_store_sound,
    image_blobs,
    push_images,
    refs,
    run_cli,
    small_specs,
    stored,
)
from tests.services import Registry

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    return push_images(registry, tmp_path_factory.mktemp("cli-images"), "lifecycle", small_specs(700))


def cli(cache: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--cache-dir", str(cache), *args])


def cli_json(cache: Path, *args: str, code: int = 0) -> Any:
    result = cli(cache, "--json", *args)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_prune_needs_a_limit_or_all(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "cache", "prune")
    assert result.returncode == 2
    assert "--max-size SIZE, --min-free-space SIZE, or --all" in result.stderr
    bad = run_cli(tmp_path / "cache", "prune", "--max-size", "lots")
    assert bad.returncode == 2 and "invalid size 'lots'" in bad.stderr


def test_prune_dry_run_prints_what_the_real_run_does(tmp_path: Path, images: dict[str, Pushed]) -> None:
    cache = tmp_path / "cache"
    for name in "abc":
        cli_json(cache, "pull", images[name].ref)
    dry = cli_json(cache, "prune", "--all", "--keep", images["c"].ref, "--dry-run")
    text = cli(cache, "prune", "--all", "--keep", images["c"].ref, "--dry-run").stdout
    assert f"would evict {images['a'].ref}" in text and f"kept {images['c'].ref} (kept)" in text
    real = cli_json(cache, "prune", "--all", "--keep", images["c"].ref)
    assert dry.pop("dry_run") is True and real.pop("dry_run") is False
    assert dry == real
    assert {image["ref"] for image in real["images"]} == {images["a"].ref, images["b"].ref}
    assert real["freed_bytes"] == sum(blob["size"] for blob in real["blobs"]) > 0
    store = BlobStore(cache)
    assert refs(store) == {images["c"].ref} and stored(store) == image_blobs(images["c"].image)


def test_pin_unpin_and_ls(tmp_path: Path, images: dict[str, Pushed]) -> None:
    cache = tmp_path / "cache"
    cli_json(cache, "pull", images["a"].ref)
    cli_json(cache, "pull", images["b"].ref)
    assert cli_json(cache, "pin", f"docker://{images['a'].ref}") == {"ref": images["a"].ref, "pinned": True}
    unknown = run_cli(cache, "pin", "docker.io/library/nothing:1")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "layerhoard: error: docker.io/library/nothing:1 is not in the cache (`layerhoard ls` lists the cached names)"]
    rows = {row["ref"]: row for row in cli_json(cache, "ls")["images"]}
    assert rows[images["a"].ref]["pinned"] and not rows[images["b"].ref]["pinned"]
    store = BlobStore(cache)
    for name in "ab":
        expected = sum(store.size(parse_digest(d)) for d in image_blobs(images[name].image))
        assert rows[images[name].ref]["size"] == expected
        assert rows[images[name].ref]["source"] == f"docker://{images[name].ref}"
        assert rows[images[name].ref]["last_used"] > time.time() - 120
    header, *lines = cli(cache, "ls").stdout.splitlines()
    assert header.split()[:3] == ["REF", "DIGEST", "SIZE"]
    assert any(line.startswith(images["a"].ref) and line.rstrip().endswith("yes") for line in lines)
    assert cli_json(cache, "prune", "--all")["protected"] == {images["a"].ref: "pinned"}
    assert refs(store) == {images["a"].ref}
    assert cli_json(cache, "unpin", images["a"].ref) == {"ref": images["a"].ref, "pinned": False}
    again = cli(cache, "unpin", images["a"].ref)
    assert again.exit_code == 1 and "is not pinned" in again.output
    assert cli_json(cache, "prune", "--all")["images"][0]["ref"] == images["a"].ref
    assert refs(store) == set() and stored(store) == set()


def test_config_set_get_unset(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert cli(cache, "config", "set", "max-size", "50G").exit_code == 0
    assert cli(cache, "config", "set", "keep-duration", "7d").exit_code == 0
    assert json.loads((cache / "config.json").read_text()) == {"keep-duration": "7d", "max-size": "50G"}
    assert cli_json(cache, "config", "get") == {"keep-duration": "7d", "max-size": "50G"}
    assert cli(cache, "config", "get", "max-size").stdout.strip() == "max-size = 50G"
    bad_key = run_cli(cache, "config", "set", "max-sise", "1G")
    assert bad_key.returncode == 2 and "'max-sise' is not one of" in bad_key.stderr
    bad_value = run_cli(cache, "config", "set", "min-free-space", "ten gigs")
    assert bad_value.returncode == 2 and "invalid size 'ten gigs'" in bad_value.stderr
    bad_duration = run_cli(cache, "config", "set", "keep-duration", "1 fortnight")
    assert bad_duration.returncode == 2 and "invalid duration" in bad_duration.stderr
    assert cli_json(cache, "config", "unset", "max-size") == {"max-size": None, "removed": True}
    assert json.loads((cache / "config.json").read_text()) == {"keep-duration": "7d"}
    (cache / "config.json").write_text("{not json")
    broken = run_cli(cache, "config", "get")
    assert broken.returncode == 1 and "config.json is not valid JSON" in broken.stderr


def test_standing_policy_prunes_in_the_background_after_a_pull(tmp_path: Path, images: dict[str, Pushed]) -> None:
    cache = tmp_path / "cache"
    assert run_cli(cache, "pull", images["a"].ref).returncode == 0  # no policy: nothing starts
    assert run_cli(cache, "config", "set", "max-size", "1K").returncode == 0
    started = time.monotonic()
    result = run_cli(cache, "pull", images["c"].ref)
    assert result.returncode == 0, result.stderr
    store = BlobStore(cache)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (refs(store) or stored(store)):
        time.sleep(0.2)
    assert refs(store) == set() and stored(store) == set(), "the background prune did not run"
    assert time.monotonic() - started < 30
    assert_store_sound(store)


def test_stats_count_hits_misses_and_bytes_per_source(tmp_path: Path, images: dict[str, Pushed]) -> None:
    cache = tmp_path / "cache"
    first = cli_json(cache, "pull", images["a"].ref)
    second = cli_json(cache, "pull", images["b"].ref)  # shares the base layer with a
    third = cli_json(cache, "pull", images["a"].ref)  # all stored
    layout = images["c"].image.layout
    cli_json(cache, "pull", f"oci:{layout}:1", "--name", "example.com/c:1")
    data = cli_json(cache, "stats")
    registry = data["sources"]["registry"]
    assert registry["pulls"] == 3
    assert registry["misses"] == 2 + 1 and registry["hits"] == 1 + 2
    assert registry["bytes_fetched"] == first["bytes_fetched"] + second["bytes_fetched"] + third["bytes_fetched"]
    base_size = images["a"].image.layers[0].size
    assert registry["bytes_reused"] == base_size + sum(layer.size for layer in images["a"].image.layers)
    assert data["sources"]["oci"]["pulls"] == 1 and data["sources"]["oci"]["misses"] == 1
    assert data["sources"]["daemon"]["pulls"] == 0 and data["sources"]["archive"]["pulls"] == 0
    assert data["total"]["pulls"] == 4
    assert data["dedup_saved_bytes"] == base_size  # a and b share it once on disk
    text = cli(cache, "stats").stdout
    assert text.splitlines()[0].split() == ["SOURCE", "PULLS", "HITS", "MISSES", "FETCHED", "REUSED"]
    assert "dedup saved" in text


def test_damaged_index_says_rebuild_and_rebuild_restores_it(tmp_path: Path, images: dict[str, Pushed]) -> None:
    cache = tmp_path / "cache"
    cli_json(cache, "pull", images["a"].ref)
    cli_json(cache, "verify", "--diff-ids")  # the pull's diff_id check, done (or waited for) here
    cli_json(cache, "pin", images["a"].ref)
    store = BlobStore(cache)
    before = {str(d): r for d, r in store.index.blobs()}
    pairs = {str(d): str(store.index.diff_id_of(d)) for d in map(parse_digest, before) if store.index.diff_id_of(d)}
    store.close()
    # An intact database rebuilt anyway keeps its pins.
    rebuilt = cli_json(cache, "gc", "--rebuild-index")
    assert rebuilt["rebuilt_index"]["pins"] == 1 and rebuilt["rebuilt_index"]["images"] == 1
    for path in (cache / "meta").iterdir():
        path.write_bytes(b"this is not an SQLite database" * 100)
    broken = run_cli(cache, "ls")
    assert broken.returncode == 1
    assert len(broken.stderr.strip().splitlines()) == 1
    assert "run `layerhoard gc --rebuild-index`" in broken.stderr
    result = run_cli(cache, "--json", "gc", "--rebuild-index")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["rebuilt_index"]
    assert data["blobs"] == len(before) and data["images"] == 1 and data["diff_ids"] == len(images["a"].image.layers)
    store = BlobStore(cache)
    after = {str(d): r for d, r in store.index.blobs()}
    assert {d: (r["size"], r["blake3"]) for d, r in after.items()} == {
        d: (r["size"], r["blake3"]) for d, r in before.items()}
    assert {str(d): str(store.index.diff_id_of(d)) for d in map(parse_digest, after)
            if store.index.diff_id_of(d)} == pairs
    assert store.index.image(images["a"].ref)["digest"] == images["a"].image.manifest_digest  # type: ignore[index]
    assert cli_json(cache, "ls")["images"][0]["ref"] == images["a"].ref
    assert cli_json(cache, "pull", images["a"].ref)["layers"][0]["reused"] is True
    assert_store_sound(store)
