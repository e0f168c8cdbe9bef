"""OCI artifacts (issue 15): an artifact pushed by oras (PyPI `oras`) is pulled into the cache,
exported and served byte for byte; what needs a file system refuses it in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import oras.client
import pytest

from cache.errors import LayerhoardError
from cache.ingest.pull import pull
from cache.sbom import image_sbom
from cache.sinks import export
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.services import Registry
from tests.test_serve import start

pytestmark = pytest.mark.registry


def push_artifact(host: str, repo_tag: str, folder: Path) -> bytes:
    """oras pushes a small file as an artifact to ``host``; returns the file's bytes."""
    payload = folder / "chart.tgz"
    payload.write_bytes(os.urandom(30_000))
    cwd = Path.cwd()
    os.chdir(folder)  # oras names the blob by its path relative to where it runs
    try:
        client = oras.client.OrasClient(hostname=host, insecure=True)
        response = client.push(target=f"{host}/{repo_tag}", files=["chart.tgz:application/vnd.example.chart"])
        assert response.status_code in (200, 201), response.text
    finally:
        os.chdir(cwd)
    return payload.read_bytes()


def pull_artifact(host: str, repo_tag: str, folder: Path) -> bytes:
    client = oras.client.OrasClient(hostname=host, insecure=True)
    files = client.pull(target=f"{host}/{repo_tag}", outdir=str(folder))
    assert len(files) == 1, files
    return Path(files[0]).read_bytes()


def test_an_artifact_is_pulled_exported_and_served_byte_for_byte(
        store: BlobStore, registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "push").mkdir()
    data = push_artifact(registry.host, "art/chart:1", tmp_path / "push")
    ref = f"{registry.host}/art/chart:1"
    report = pull(store, ref)
    assert report.layers[0].diff_id is None and report.layers[0].size == len(data)
    image = load_image(store, ref)
    assert image.manifest.artifact_type is not None

    export(store, image, f"oci:{tmp_path / 'out'}:chart")
    layout_index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert layout_index["manifests"][0]["digest"] == report.digest  # the manifest as it was, unchanged
    blob = report.layers[0].digest
    assert (tmp_path / "out" / "blobs" / "sha256" / blob[7:]).read_bytes() == data

    with start(store, default_registry=registry.host) as server:
        (tmp_path / "served").mkdir()
        assert pull_artifact(server.host, "art/chart:1", tmp_path / "served") == data


def test_an_artifact_pushed_into_serve_is_kept_and_refused_where_a_file_system_is_needed(
        store: BlobStore, tmp_path: Path) -> None:
    (tmp_path / "push").mkdir()
    with start(store, allow_push=True) as server:
        data = push_artifact(server.host, "team/chart:2", tmp_path / "push")
        (tmp_path / "back").mkdir()
        assert pull_artifact(server.host, "team/chart:2", tmp_path / "back") == data
    image = load_image(store, "push:docker.io/team/chart:2")
    for attempt in (lambda: image_sbom(image),
                    lambda: export(store, image, f"docker-archive:{tmp_path / 'a.tar'}")):
        with pytest.raises(LayerhoardError, match=r"is an OCI artifact .* not a container image"):
            attempt()
    assert not (tmp_path / "a.tar").exists()
    export(store, image, f"oci:{tmp_path / 'layout'}:x")  # an OCI layout takes it as it is
