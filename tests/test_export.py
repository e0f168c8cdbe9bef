"""Export: OCI layouts read by skopeo, tarballs loaded by the private dockerd, deterministic transcoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.ingest.pull import PullOptions, pull
from cache.model.digest import parse_digest
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import TestImage, build_image, random_layer
from tests.services import Daemon, skopeo


def cached(store: BlobStore, tmp_path: Path, name: str, compression: str = "gzip", seed: int = 1) -> TestImage:
    """A two-layer test image, pulled into the store from an independently written OCI layout."""
    image = build_image(tmp_path / f"src-{seed}", [random_layer(6000, seed), random_layer(200_000, seed + 1, True)],
                        compression=compression, tag="t")
    pull(store, f"oci:{image.layout}:t", PullOptions(name=name))
    return image


def test_oci_layout_is_hard_linked_read_by_skopeo_and_idempotent(store: BlobStore, tmp_path: Path) -> None:
    image = cached(store, tmp_path, "docker.io/library/app:1")
    other = cached(store, tmp_path, "docker.io/library/other:2", seed=7)
    out = tmp_path / "out"
    first = export(store, load_image(store, "docker.io/library/app:1"), f"oci:{out}:app")
    export(store, load_image(store, "docker.io/library/other:2"), f"oci:{out}:other")
    index_before = (out / "index.json").read_bytes()
    again = export(store, load_image(store, "docker.io/library/app:1"), f"oci:{out}:app")

    assert first.linked == 4 and first.copied == 0 and first.digest == image.manifest_digest
    assert not again.changed and again.linked == 0 and (out / "index.json").read_bytes() == index_before
    for layer in image.layers:
        exported = out / "blobs" / "sha256" / layer.digest[7:]
        assert exported.stat().st_ino == (store.blobs_dir / layer.digest[7:]).stat().st_ino
    for tag, expected in (("app", image), ("other", other)):
        inspected = json.loads(skopeo("inspect", f"oci:{out}:{tag}").stdout)
        assert inspected["Digest"] == expected.manifest_digest
        config = json.loads(skopeo("inspect", "--config", f"oci:{out}:{tag}").stdout)
        assert config["rootfs"]["diff_ids"] == expected.diff_ids


def test_gzip_transcoding_is_deterministic_and_kept(store: BlobStore, tmp_path: Path) -> None:
    image = cached(store, tmp_path, "docker.io/library/zapp:1", compression="zstd")
    source = load_image(store, "docker.io/library/zapp:1")
    first = export(store, source, f"oci:{tmp_path / 'a'}", "gzip")
    second = export(store, source, f"oci:{tmp_path / 'b'}", "gzip")

    assert first.digest == second.digest != image.manifest_digest
    assert all(layer["transcoded"] for layer in first.layers)
    assert all(layer["reused"] and not layer["transcoded"] for layer in second.layers)
    for layer, diff_id in zip(first.layers, image.diff_ids, strict=True):
        digest = layer["digest"]
        assert layer["media_type"].endswith("+gzip")
        assert store.has(parse_digest(digest))
        assert str(store.index.diff_id_of(parse_digest(digest))) == diff_id
    config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'b'}:docker.io/library/zapp:1").stdout)
    assert config["rootfs"]["diff_ids"] == image.diff_ids


@pytest.mark.daemon
def test_docker_archive_loads_into_dockerd(store: BlobStore, tmp_path: Path, dockerd: Daemon) -> None:
    image = cached(store, tmp_path, "docker.io/library/zarc:1", compression="zstd")  # zstd: 20.10 needs gzip
    tarball = tmp_path / "image.tar"
    export(store, load_image(store, "docker.io/library/zarc:1"), f"docker-archive:{tarball}:exported/zarc:1")
    again = tmp_path / "again.tar"
    export(store, load_image(store, "docker.io/library/zarc:1"), f"docker-archive:{again}:exported/zarc:1")

    assert tarball.read_bytes() == again.read_bytes()
    dockerd.docker("load", "-i", str(tarball), check=True)
    inspect = dockerd.client().api.inspect_image("exported/zarc:1")
    assert inspect["RootFS"]["Layers"] == image.diff_ids


@pytest.mark.daemon
def test_cli_exports_to_stdout_and_to_the_daemon(store: BlobStore, tmp_path: Path, dockerd: Daemon) -> None:
    image = cached(store, tmp_path, "docker.io/library/cliapp:3")
    env = {**os.environ, "DOCKER_HOST": dockerd.host}
    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(store.root)]
    streamed = subprocess.run([*command, "export", "cliapp:3", "docker-archive:-"], capture_output=True, env=env)
    assert streamed.returncode == 0, streamed.stderr
    dockerd.docker("load", input=streamed.stdout, check=True)
    assert dockerd.client().api.inspect_image("cliapp:3")["RootFS"]["Layers"] == image.diff_ids

    since = dockerd.mark()
    loaded = subprocess.run([*command, "--json", "export", "cliapp:3", "docker-daemon:direct/cliapp:4",
                             "--compression", "none"], capture_output=True, env=env, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert {layer["media_type"] for layer in json.loads(loaded.stdout)["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar"}
    assert dockerd.client().api.inspect_image("direct/cliapp:4")["RootFS"]["Layers"] == image.diff_ids
    assert any(method == "POST" and "/images/load" in path for method, path in dockerd.api_calls(since))


def test_bad_destination_and_missing_image_fail_cleanly(store: BlobStore, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cli.main", "--cache-dir", str(store.root), "export"]
    bad = subprocess.run([*command, "docker.io/library/x:1", "ftp:/tmp/x"], capture_output=True, text=True)
    missing = subprocess.run([*command, "--compression", "gzip", f"oci:{tmp_path}/nothing:x", f"oci:{tmp_path}/o"],
                             capture_output=True, text=True)
    assert bad.returncode == 1 and "unsupported destination transport 'ftp'" in bad.stderr
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert not (tmp_path / "o").exists()
