"""The team remote tier: two caches (two machines) sharing images through a second, real registry.

The origin is the session registry; the remote is a registry of its own, started here. What each
machine asked of whom is read from the registries' access logs (and the daemon's debug log).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cache.remote.address import parse_remote, remote_tag
from tests.images import TestImage, build_image, load_into_daemon, push, random_layer
from tests.services import Daemon, Registry, free_port, start_registry

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parent.parent
UPLOADS = {"PUT", "POST", "PATCH"}


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("remote-registry"))


def lh(cache: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run the layerhoard command on ``cache`` (one machine); its JSON result and its stderr."""
    result = subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), "--json", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def image_in_origin(tmp_path: Path, origin: Registry, seed: int) -> tuple[TestImage, str]:
    image = build_image(tmp_path / f"layout{seed}", [random_layer(600_000, seed), random_layer(300_000, seed + 1)],
                        tag="v1")
    return image, push(tmp_path / f"layout{seed}", "v1", origin, f"team/app{uuid.uuid4().hex[:8]}:v1")


def remote_name(remote: Registry) -> str:
    return f"{remote.host}/cache{uuid.uuid4().hex[:8]}"


def test_second_machine_gets_every_blob_from_the_remote(tmp_path: Path, registry: Registry, remote: Registry) -> None:
    image, ref = image_in_origin(tmp_path, registry, 10)
    shared = remote_name(remote)
    first, _ = lh(tmp_path / "a", "pull", ref, "--remote", shared)
    assert first["bytes_from_remote"] == 0 and first["bytes_fetched"] > 0

    origin_mark, remote_mark = registry.mark(), remote.mark()
    second, stderr = lh(tmp_path / "b", "pull", ref, "--remote", shared)
    assert stderr == ""
    assert registry.requests(origin_mark) == []  # no blob GET, not even a manifest GET: resolved by name
    assert second["digest"] == image.manifest_digest
    assert all(not layer["reused"] for layer in second["layers"])
    assert second["bytes_from_remote"] == second["bytes_fetched"] >= sum(la.size for la in image.layers)
    got = {r.path.rsplit("/", 1)[-1] for r in remote.blob_requests(remote_mark) if r.status == 200}
    assert got == {image.config_digest, *(layer.digest for layer in image.layers)}
    assert not {r.method for r in remote.requests(remote_mark)} & UPLOADS  # B found it all: fills nothing

    # export and sbom pull through the remote the same way.
    origin_mark = registry.mark()
    lh(tmp_path / "c", "export", ref, f"oci:{tmp_path / 'out'}:v1", "--remote", shared)
    lh(tmp_path / "d", "sbom", ref, "--remote", shared, "-o", str(tmp_path / "sbom.json"))
    assert registry.requests(origin_mark) == []


def test_daemon_image_shared_by_name(tmp_path: Path, remote: Registry, dockerd: Daemon) -> None:
    image = build_image(tmp_path / "layout", [random_layer(400_000, 20), random_layer(200_000, 21)], tag="dev")
    name = f"teamapp{uuid.uuid4().hex[:8]}:dev"
    load_into_daemon(tmp_path / "layout", "dev", dockerd, name)
    shared = remote_name(remote)
    first, _ = lh(tmp_path / "a", "pull", f"docker-daemon:{name}", "--docker-host", dockerd.host, "--remote", shared)

    # B has no daemon at all: the name resolves through the remote's tag for it.
    no_daemon = f"unix://{tmp_path / 'no-docker.sock'}"
    second, stderr = lh(tmp_path / "b", "pull", f"docker-daemon:{name}", "--docker-host", no_daemon,
                        "--remote", shared)
    assert stderr == ""
    assert (second["ref"], second["digest"]) == (f"docker-daemon:docker.io/library/{name}", first["digest"])
    assert second["bytes_from_remote"] > 0 and all(not layer["reused"] for layer in second["layers"])
    assert [layer["diff_id"] for layer in second["layers"]] == image.diff_ids

    # C has the same image in its daemon: blobs come from the remote, and no `docker save` runs.
    mark = dockerd.mark()
    third, _ = lh(tmp_path / "c", "pull", f"docker-daemon:{name}", "--docker-host", dockerd.host,
                  "--remote", shared)
    assert third["digest"] == first["digest"] and third["bytes_from_remote"] > 0
    assert dockerd.save_calls(mark) == []


def test_remote_down_falls_back_to_the_origin_with_one_warning(tmp_path: Path, registry: Registry) -> None:
    image, ref = image_in_origin(tmp_path, registry, 30)
    mark = registry.mark()
    report, stderr = lh(tmp_path / "a", "pull", ref, "--remote", f"127.0.0.1:{free_port()}/cache")
    assert report["digest"] == image.manifest_digest and report["bytes_from_remote"] == 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerhoard: warning: remote 127.0.0.1:"), stderr
    assert len([r for r in registry.blob_requests(mark) if r.status == 200]) == 3  # config and two layers


def test_read_only_mode_uploads_nothing(tmp_path: Path, registry: Registry, remote: Registry) -> None:
    _, ref = image_in_origin(tmp_path, registry, 40)
    shared = remote_name(remote)
    mark = remote.mark()
    lh(tmp_path / "a", "pull", ref, "--remote", shared, "--remote-read-only")
    asked = remote.requests(mark)
    assert asked and not {r.method for r in asked} & UPLOADS  # the remote was asked, never filled

    # The same through the config, as a CI runner would set it.
    _, ref = image_in_origin(tmp_path, registry, 42)
    lh(tmp_path / "b", "config", "set", "remote", shared)
    lh(tmp_path / "b", "config", "set", "remote-mode", "read-only")
    mark = remote.mark()
    lh(tmp_path / "b", "pull", ref)
    asked = remote.requests(mark)
    assert asked and not {r.method for r in asked} & UPLOADS


def test_push_cache_never_uploads_what_the_remote_has(tmp_path: Path, registry: Registry, remote: Registry) -> None:
    _, ref = image_in_origin(tmp_path, registry, 50)
    shared = remote_name(remote)
    lh(tmp_path / "a", "pull", ref)  # no remote: nothing pushed
    first, _ = lh(tmp_path / "a", "push-cache", ref, "--remote", shared)
    assert (first["blobs_uploaded"], first["blobs_present"], first["manifests_put"]) == (3, 0, 1)

    mark = remote.mark()
    again, _ = lh(tmp_path / "a", "push-cache", "--remote", shared)  # every cached image
    assert (again["blobs_uploaded"], again["blobs_present"], again["manifests_put"]) == (0, 3, 0)
    asked = remote.requests(mark)
    assert {r.method for r in asked} == {"HEAD"}


def test_same_registry_remote_mounts_instead_of_uploading(tmp_path: Path, registry: Registry) -> None:
    _, ref = image_in_origin(tmp_path, registry, 60)
    mark = registry.mark()
    lh(tmp_path / "a", "pull", ref, "--remote", remote_name(registry))
    asked = registry.requests(mark)
    mounts = [r for r in asked if r.method == "POST" and "mount=" in r.path]
    assert len(mounts) == 3 and all(r.status == 201 for r in mounts)
    assert not [r for r in asked if r.method == "PUT" and "/blobs/" in r.path]  # no blob bytes sent


def test_bad_bytes_in_the_remote_are_refused_and_the_origin_used(
    tmp_path: Path, registry: Registry, remote: Registry
) -> None:
    image, ref = image_in_origin(tmp_path, registry, 70)
    shared = remote_name(remote)
    lh(tmp_path / "a", "pull", ref, "--remote", shared)
    layer = image.layers[0].digest[7:]
    data = remote.workdir / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256" / layer[:2] / layer / "data"
    data.write_bytes(bytes(len(data.read_bytes())))  # same size, wrong bytes: someone tampered with it
    mark = registry.mark()
    report, stderr = lh(tmp_path / "b", "pull", ref, "--remote", shared)
    assert report["digest"] == image.manifest_digest
    assert len(stderr.strip().splitlines()) == 1 and "sha256" in stderr
    assert [r.path.rsplit("/", 1)[-1] for r in registry.blob_requests(mark)] == [image.layers[0].digest]
    lh(tmp_path / "b", "verify", "--full")


def test_remote_tags_are_valid_distinct_and_stable() -> None:
    tag = remote_tag("docker", "docker.io/library/alpine:3.20", "linux/amd64")
    assert tag == remote_tag("docker", "docker.io/library/alpine:3.20", "linux/amd64")
    assert tag.startswith("docker.io_library_alpine_3.20--linux_amd64--")
    others = {
        remote_tag("docker", "docker.io/library/alpine_3.20", "linux/amd64"),
        remote_tag("daemon", "docker.io/library/alpine:3.20", "linux/amd64"),
        remote_tag("docker", "docker.io/library/alpine:3.20", "linux/arm64"),
    }
    assert tag not in others and len(others) == 3
    long = remote_tag("docker", "registry.example.com/" + "a/" * 200 + "b:1", "linux/amd64")
    for value in (tag, long, *others):
        assert re.fullmatch(r"[\w][\w.-]{0,127}", value), value
    assert parse_remote("registry.example.com:5000/team/cache").name == "registry.example.com:5000/team/cache"
    for bad in ("cache", "registry.example.com/team/cache:v1", "registry.example.com/Team"):
        with pytest.raises(Exception, match="invalid remote"):
            parse_remote(bad)
