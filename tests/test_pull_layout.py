"""oci: imports check every blob; warm reads image lists and zarf.yaml; the Python API end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache import BlobStore, load_image
from cache.errors import DigestMismatch, ImageNotFound, LayerhoardError
from cache.formats.compression import DiffIdHasher
from cache.ingest.pull import pull
from cache.ingest.warm import read_image_list, read_zarf_images
from cache.model.digest import parse_digest
from cache.model.manifests import compression_of
from tests.images import build_image, push, random_layer
from tests.services import Registry, skopeo

EXAMPLE = Path(__file__).parent.parent / "examples" / "hello"


def cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True)


def test_example_layout_is_the_readme_main_job(tmp_path: Path) -> None:
    first = cli(tmp_path / "cache", "--json", "pull", f"oci:{EXAMPLE}:1.0")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["ref"] == "localhost/hello:1.0" and report["layers"][0]["reused"] is False
    again = json.loads(cli(tmp_path / "cache", "--json", "pull", f"oci:{EXAMPLE}:1.0").stdout)
    assert again["layers"][0]["reused"] is True and again["digest"] == report["digest"]


def test_python_api_pull_then_read_layers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    report = pull(store, f"oci:{EXAMPLE}:1.0")
    image = load_image(store, report.ref)
    assert str(image.digest) == report.digest
    for index, layer in enumerate(image.layers):
        hasher = DiffIdHasher(compression_of(layer.media_type))
        with image.open_layer(index) as stream:
            hasher.update(stream.read())
        assert hasher.finish() == image.config.diff_ids[index]


def test_corrupt_layout_blob_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [random_layer(20_000, 1), random_layer(30_000, 2)], tag="v1")
    victim = tmp_path / "layout" / "blobs" / "sha256" / image.layers[1].digest[7:]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    store = BlobStore(tmp_path / "cache")
    with pytest.raises(DigestMismatch, match=image.layers[1].digest):
        pull(store, f"oci:{tmp_path / 'layout'}:v1")
    assert store.images() == []
    assert sorted(os.listdir(store.ingest_dir)) == []
    assert not store.has(parse_digest(image.layers[1].digest))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "not an OCI image layout"),
        (lambda root: (root / "oci-layout").write_text("{}"), "no index.json"),
        (lambda root: ((root / "oci-layout").write_text("{}"), (root / "index.json").write_text("[")),
         "not valid JSON"),
    ],
    ids=["no-oci-layout", "no-index", "bad-index"],
)
def test_bad_layouts_are_clear_errors(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "layout"
    root.mkdir()
    setup(root)
    result = cli(tmp_path / "cache", "pull", f"oci:{root}")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_unknown_ref_in_layout(tmp_path: Path) -> None:
    build_image(tmp_path / "layout", [random_layer(1000, 3)], tag="v1")
    with pytest.raises(ImageNotFound, match="no image named 'v2'"):
        pull(BlobStore(tmp_path / "cache"), f"oci:{tmp_path / 'layout'}:v2")


def test_image_list_and_zarf_yaml(tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("# base images\nalpine:3.20\n\n127.0.0.1:5000/app:1  # ours\n")
    assert read_image_list(listing) == ["alpine:3.20", "127.0.0.1:5000/app:1"]
    zarf = tmp_path / "zarf.yaml"
    zarf.write_text(
        "kind: ZarfPackageConfig\nmetadata:\n  name: demo\ncomponents:\n"
        "  - name: a\n    images:\n      - alpine:3.20\n      - nginx:1.27\n"
        "  - name: b\n    required: true\n    images:\n      - alpine:3.20\n"
        "  - name: c\n    manifests: []\n"
    )
    assert read_zarf_images(zarf) == ["alpine:3.20", "nginx:1.27"]
    zarf.write_text("components: [{images: [{name: x}]}]")
    with pytest.raises(LayerhoardError, match="images must be strings"):
        read_zarf_images(zarf)
    zarf.write_text("kind: [unclosed")
    with pytest.raises(LayerhoardError, match="not valid YAML"):
        read_zarf_images(zarf)


def test_warm_from_zarf_against_the_registry(registry: Registry, tmp_path: Path) -> None:
    base = random_layer(300_000, 40)
    refs = []
    for i in range(2):
        image = build_image(tmp_path / f"img{i}", [base, random_layer(50_000, 41 + i)], tag="1")
        refs.append(push(image.layout, "1", registry, f"warm/zarf-{i}:1"))
    zarf = tmp_path / "zarf.yaml"
    components = "".join(f"  - name: c{i}\n    images: ['{ref}']\n" for i, ref in enumerate(refs))
    zarf.write_text("components:\n" + components)
    mark = registry.mark()
    result = cli(tmp_path / "cache", "--json", "warm", "--from-zarf", str(zarf))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [r["ref"] for r in summary["images"]] == refs
    assert len(registry.blob_requests(mark)) == 2 + 2 + 1  # two configs, two app layers, the base once
    missing = cli(tmp_path / "cache", "warm")
    assert missing.returncode == 2 and "name images to warm" in missing.stderr


def test_warm_does_the_whole_packaging_step(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "img", [random_layer(100_000, 50), random_layer(20_000, 51)], tag="1")
    ref = push(image.layout, "1", registry, "warm/package:1")
    args = ["--json", "warm", ref, f"oci:{EXAMPLE}:1.0", "--export", f"oci:{tmp_path / 'out'}",
            "--sbom-dir", str(tmp_path / "sboms")]
    first = cli(tmp_path / "cache", *args)
    assert first.returncode == 0, first.stderr
    packaged = json.loads(first.stdout)["packaged"]
    assert [p["ref"] for p in packaged] == [ref, "localhost/hello:1.0"]
    for entry in packaged:
        inspected = skopeo("inspect", "--raw", f"oci:{tmp_path / 'out'}:{entry['ref']}").stdout
        assert json.loads(inspected)["layers"]
        assert json.loads(Path(entry["sbom"]["path"]).read_text())["spdxVersion"] == "SPDX-2.3"
    mark = registry.mark()
    again = json.loads(cli(tmp_path / "cache", *args).stdout)["packaged"]
    assert registry.blob_requests(mark) == []
    assert all(entry["sbom"]["layers_scanned"] == 0 for entry in again)
    bad = cli(tmp_path / "cache", "warm", ref, "--export", f"docker-archive:{tmp_path / 'x.tar'}")
    assert bad.returncode == 2 and "give oci:DIR" in bad.stderr
