"""docker-archive: imports of tarballs the private dockerd saved: names, reuse across sources, stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.errors import SourceError
from cache.model.refs import ArchiveSource, DaemonSource
from cache.sources.archive import pull_from_archive
from cache.sources.daemon import pull_from_daemon
from cache.store.blobstore import BlobStore
from tests.images import build_image, load_into_daemon, random_layer
from tests.services import Daemon

pytestmark = pytest.mark.daemon


@pytest.fixture(scope="module")
def saved(dockerd: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An image in the daemon and two docker saves of it: by name (tagged) and by ID (untagged)."""
    root = tmp_path_factory.mktemp("archives")
    image = build_image(root / "layout", [random_layer(600_000, 51), random_layer(40_000, 52, compressible=True)])
    load_into_daemon(image.layout, image.tag, dockerd, "lh/archived:2")
    image_id = dockerd.client().api.inspect_image("lh/archived:2")["Id"]
    dockerd.docker("save", "-o", str(root / "tagged.tar"), "lh/archived:2", check=True)
    dockerd.docker("save", "-o", str(root / "My Image.tar"), image_id, check=True)
    return {"tagged": root / "tagged.tar", "untagged": root / "My Image.tar", "diff_ids": image.diff_ids,
            "image_id": image_id}


def test_tagged_archive_then_daemon_pull_needs_no_save(
    dockerd: Daemon, saved: dict[str, object], store: BlobStore
) -> None:
    report = pull_from_archive(store, ArchiveSource(str(saved["tagged"])))
    assert report.ref == "docker-archive:docker.io/lh/archived:2"
    assert report.source == f"docker-archive:{saved['tagged']}"
    assert [layer.diff_id for layer in report.layers] == saved["diff_ids"]
    assert not any(layer.reused for layer in report.layers)
    # The daemon's copy of the same image is now entirely stored: same manifest, no save stream.
    mark = dockerd.mark()
    daemon = pull_from_daemon(store, DaemonSource("lh/archived:2"), docker_host=dockerd.host)
    assert dockerd.save_calls(mark) == []
    assert daemon.digest == report.digest


def test_untagged_archive_is_named_after_its_file(saved: dict[str, object], store: BlobStore) -> None:
    report = pull_from_archive(store, ArchiveSource(str(saved["untagged"])))
    assert report.ref == "localhost/my-image:latest"
    named = pull_from_archive(store, ArchiveSource(str(saved["untagged"])), name="localhost/chosen:1")
    assert named.ref == "localhost/chosen:1" and named.digest == report.digest
    assert all(layer.reused for layer in named.layers)


def test_cli_import_from_stdin(saved: dict[str, object], tmp_path: Path) -> None:
    with open(saved["tagged"], "rb") as stdin:  # type: ignore[call-overload]
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "--cache-dir", str(tmp_path / "cache"), "--json", "pull",
             "docker-archive:-"], stdin=stdin, capture_output=True, text=True,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ref"] == "docker-archive:docker.io/lh/archived:2"
    assert [layer["diff_id"] for layer in report["layers"]] == saved["diff_ids"]


def test_missing_file(store: BlobStore, tmp_path: Path) -> None:
    before = set(os.listdir(store.blobs_dir))
    with pytest.raises(SourceError, match="cannot read docker-archive"):
        pull_from_archive(store, ArchiveSource(str(tmp_path / "absent.tar")))
    assert set(os.listdir(store.blobs_dir)) == before
