"""Registry pulls against the real docker-registry: costs proven from its access log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cache.ingest.pull import PullOptions, pull
from cache.model.digest import parse_digest
from cache.model.manifests import Platform
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import build_image, build_index, push, random_layer
from tests.services import Registry


def run_cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two images sharing a 2 MB base layer, one gzip-layered, pushed to the registry."""
    root = tmp_path_factory.mktemp("images")
    base = random_layer(2_000_000, 10)
    app_a = build_image(root / "a", [base, random_layer(300_000, 11, compressible=True)], tag="1")
    app_b = build_image(root / "b", [base, random_layer(200_000, 12)], tag="1")
    return {
        "a": app_a, "b": app_b,
        "ref_a": push(app_a.layout, "1", registry, "pull/app-a:1"),
        "ref_b": push(app_b.layout, "1", registry, "pull/app-b:1"),
    }


def test_cold_then_warm_pull_costs_one_manifest_request(
    registry: Registry, two_images: dict[str, object], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    ref, image = two_images["ref_a"], two_images["a"]
    cold = run_cli(cache, "--json", "pull", str(ref))
    assert cold.returncode == 0, cold.stderr
    report = json.loads(cold.stdout)
    assert report["ref"] == ref and report["digest"] == image.manifest_digest  # type: ignore[attr-defined]
    assert [layer["diff_id"] for layer in report["layers"]] == image.diff_ids  # type: ignore[attr-defined]
    assert not any(layer["reused"] for layer in report["layers"])
    assert report["bytes_fetched"] >= sum(layer.size for layer in image.layers)  # type: ignore[attr-defined]

    mark = registry.mark()
    warm = run_cli(cache, "--json", "pull", str(ref))
    assert warm.returncode == 0, warm.stderr
    report = json.loads(warm.stdout)
    assert all(layer["reused"] for layer in report["layers"])
    seen = registry.requests(mark)
    assert [(r.method, r.path) for r in seen] == [("GET", "/v2/pull/app-a/manifests/1")]
    assert registry.blob_requests(mark) == []


def test_pull_by_digest_and_offline_make_no_request(
    registry: Registry, two_images: dict[str, object], tmp_path: Path
) -> None:
    store = BlobStore(tmp_path / "cache")
    ref, image = str(two_images["ref_a"]), two_images["a"]
    pull(store, ref)
    mark = registry.mark()
    by_digest = pull(store, f"{ref.rsplit(':', 1)[0]}@{image.manifest_digest}")  # type: ignore[attr-defined]
    offline = pull(store, ref, PullOptions(offline=True))
    assert by_digest.digest == offline.digest == image.manifest_digest  # type: ignore[attr-defined]
    assert registry.requests(mark) == []


def test_offline_pull_of_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "cache", "pull", "--offline", "127.0.0.1:1/none/such:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "layerhoard: error: 127.0.0.1:1/none/such:1 is not in the cache, and --offline forbids fetching it"
    ]


def test_shared_layers_are_fetched_once_by_warm(
    registry: Registry, two_images: dict[str, object], tmp_path: Path
) -> None:
    mark = registry.mark()
    result = run_cli(tmp_path / "cache", "--json", "warm", str(two_images["ref_a"]), str(two_images["ref_b"]))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["images"]) == 2 and summary["failed"] == []
    paths = [r.path for r in registry.blob_requests(mark)]
    assert len(paths) == len(set(p.rsplit("/", 1)[1] for p in paths)), paths  # no digest twice
    base_digest = two_images["a"].layers[0].digest  # type: ignore[attr-defined]
    assert sum(1 for p in paths if p.endswith(base_digest)) == 1
    assert summary["images"][1]["layers"][0]["reused"] is True


def test_multi_arch_index_platform_choice(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "multi"
    amd = build_image(root, [random_layer(50_000, 20)], platform=("linux", "amd64"), write_tag=False)
    arm = build_image(root, [random_layer(60_000, 21)], platform=("linux", "arm64"), write_tag=False)
    index_digest, _ = build_index(root, [amd, arm], [("linux", "amd64"), ("linux", "arm64")], "multi")
    ref = push(root, "multi", registry, "pull/multi:1", all_platforms=True)
    store = BlobStore(tmp_path / "cache")
    report = pull(store, ref, PullOptions(platform=Platform.parse("linux/arm64")))
    assert report.digest == arm.manifest_digest and report.platform == "linux/arm64"
    assert not store.has(parse_digest(amd.layers[0].digest))
    image = load_image(store, report.ref)
    assert [str(d) for d in image.config.diff_ids] == arm.diff_ids

    everything = pull(store, ref, PullOptions(all_platforms=True))
    assert everything.digest == index_digest
    assert len(everything.layers) == 2


def test_eight_concurrent_pulls_fetch_each_blob_once(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [random_layer(1_500_000, 30 + i) for i in range(3)])
    ref = push(image.layout, image.tag, registry, "pull/concurrent:1")
    cache = tmp_path / "cache"
    mark = registry.mark()
    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "--json", "pull", ref]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err for _, err in outputs]
    assert {json.loads(out)["digest"] for out, _ in outputs} == {image.manifest_digest}
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in registry.blob_requests(mark))
    assert fetched == sorted([image.config_digest] + [layer.digest for layer in image.layers])
    assert sum(json.loads(out)["bytes_fetched"] for out, _ in outputs) < 2 * sum(la.size for la in image.layers)
