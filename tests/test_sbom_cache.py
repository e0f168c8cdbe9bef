"""Per-layer caching: a repeated scan opens no layer, a shared base is scanned once, the command
pulls through the cache and says how many layers it scanned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache.sbom import image_sbom
from cache.sbom.catalogers import SCANNER_VERSION
from cache.sbom.records import SbomRecords
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from cli.main import main
from tests.images import build_image
from tests.test_sbom_support import image_in_store, tar_with

STATUS = b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2-1\n\n"


def _layers() -> list[bytes]:
    return [
        tar_with({"var/lib/dpkg/status": STATUS, "etc/os-release": b"ID=debian\nVERSION_ID=12\n"}),
        tar_with({"usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA":
                  b"Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n"}),
        tar_with({"app/node_modules/ms/package.json": b'{"name": "ms", "version": "2.1.3", "license": "MIT"}'}),
    ]


def _count_opens(monkeypatch: pytest.MonkeyPatch, store: BlobStore, layer_digests: set[str]) -> list[str]:
    opened: list[str] = []
    real_open = store.open

    def counting_open(digest):  # type: ignore[no-untyped-def]
        if str(digest) in layer_digests:
            opened.append(str(digest))
        return real_open(digest)

    monkeypatch.setattr(store, "open", counting_open)
    return opened


def test_repeated_scan_reads_no_layer(store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = image_in_store(store, tmp_path / "layout", _layers(), "test/app:1", compression="zstd")
    digests = {str(layer.digest) for layer in image.layers}
    opened = _count_opens(monkeypatch, store, digests)
    first = image_sbom(image)
    assert (first.layers_scanned, first.layers_cached, len(opened)) == (3, 0, 3)
    second = image_sbom(image)
    assert (second.layers_scanned, second.layers_cached, len(opened)) == (0, 3, 3)
    # stronger: with the layer blobs gone, the records alone still give the same packages
    for layer in image.layers:
        store.path(layer.digest).unlink()
    third = image_sbom(load_image(store, "test/app:1"))
    assert [(p.name, p.version, p.layer) for p in third.packages] == \
        [(p.name, p.version, p.layer) for p in first.packages]
    assert {p.name for p in third.packages} == {"bash", "six", "ms"}


def test_new_image_sharing_a_base_scans_only_its_new_layers(store: BlobStore, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = _layers()
    first = image_sbom(image_in_store(store, tmp_path / "a", base, "test/a:1"))
    assert first.layers_scanned == 3
    extra = tar_with({"app/node_modules/debug/package.json": b'{"name": "debug", "version": "4.3.4"}'})
    # the same layers recompressed (zstd instead of gzip): same diff_ids, so still no rescan
    image = image_in_store(store, tmp_path / "b", [*base, extra], "test/b:1", compression="zstd")
    opened = _count_opens(monkeypatch, store, {str(layer.digest) for layer in image.layers})
    second = image_sbom(image)
    assert (second.layers_scanned, second.layers_cached) == (1, 3)
    assert opened == [str(image.layers[3].digest)]
    assert {p.name for p in second.packages} == {"bash", "six", "ms", "debug"}


def test_records_are_keyed_by_diff_id_and_scanner_version(store: BlobStore, tmp_path: Path) -> None:
    image = image_in_store(store, tmp_path / "layout", _layers()[:1], "test/one:1")
    image_sbom(image)
    diff_id = str(image.config.diff_ids[0])
    assert SbomRecords(store.index).get(diff_id) is not None
    keys = [k for k in store.index._cache.iterkeys() if isinstance(k, str) and k.startswith("sbom/")]
    assert keys == [f"sbom/{SCANNER_VERSION}/{diff_id}"]  # one record per layer, none for the whole image


def test_sbom_command_pulls_through_the_cache_and_reports_scans(tmp_path: Path) -> None:
    build_image(tmp_path / "layout", _layers(), tag="v1")
    cache = str(tmp_path / "cache")
    runner = CliRunner()
    out = tmp_path / "bom.json"
    args = ["--cache-dir", cache, "--json", "sbom", f"oci:{tmp_path / 'layout'}:v1", "--format", "cyclonedx-json",
            "-o", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["pulled"], summary["layers_scanned"], summary["layers_cached"]) == (True, 3, 0)
    document = json.loads(out.read_text())
    assert {c["name"] for c in document["components"]} == {"debian", "bash", "six", "ms"}
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert (json.loads(again.stdout)["layers_scanned"], json.loads(again.stdout)["layers_cached"]) == (0, 3)
    # a name already in the cache is used as it is, without a pull, and the summary goes to stderr
    ref = summary["ref"]
    plain = runner.invoke(main, ["--cache-dir", cache, "sbom", ref, "--format", "json"])
    assert plain.exit_code == 0, plain.output
    assert "0 scanned, 3 from the SBOM cache" in plain.stderr
    assert {a["name"] for a in json.loads(plain.stdout)["artifacts"]} == {"bash", "six", "ms"}


def test_sbom_command_unknown_image_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--cache-dir", str(tmp_path / "c"), "sbom", f"oci:{tmp_path / 'none'}:x"])
    assert result.exit_code == 1
    assert result.stderr.startswith("layerhoard: error:") and len(result.stderr.strip().splitlines()) == 1
