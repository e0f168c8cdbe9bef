"""Names from different sources never overwrite each other (issue 15): a registry image, a daemon
image and a push into serve with the same name are three records. serve answers a push first, then
the registry's image, then the daemon's; gc keeps them all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from cache.formats.index_json import ref_name_of
from cache.ingest.pull import PullOptions, pull
from cache.model.digest import parse_digest
from cache.model.refs import daemon_image_name
from cache.store.blobstore import BlobStore
from cache.upkeep.gc import gc
from tests.images import build_image, load_into_daemon, push, random_layer
from tests.services import Daemon, Registry, skopeo
from tests.test_serve import start

pytestmark = pytest.mark.registry
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.daemon
def test_a_daemon_image_never_replaces_a_registry_image_of_the_same_name(
        store: BlobStore, registry: Registry, dockerd: Daemon, tmp_path: Path) -> None:
    from_registry = build_image(tmp_path / "r", [random_layer(20_000, 81)], tag="1")
    ref = push(from_registry.layout, "1", registry, "t/alpha:1")
    from_daemon = build_image(tmp_path / "d", [random_layer(30_000, 82)], tag="1")
    load_into_daemon(from_daemon.layout, "1", dockerd, ref)  # the same name, other content

    pulled = pull(store, ref)
    local = pull(store, f"docker-daemon:{ref}", PullOptions(docker_host=dockerd.host))
    assert local.ref == daemon_image_name(ref) != pulled.ref
    names = {ref_name_of(entry): str(entry["digest"]) for entry in store.images()}
    assert names[ref] == pulled.digest == from_registry.manifest_digest  # untouched
    assert names[daemon_image_name(ref)] == local.digest != pulled.digest

    with start(store, default_registry=registry.host) as server:
        answer = requests.get(f"{server.url}/v2/t/alpha/manifests/1", headers={"Accept": MANIFEST}, timeout=10)
    assert answer.headers["Docker-Content-Digest"] == from_registry.manifest_digest

    gc(store, grace=0)
    assert store.has(parse_digest(pulled.digest)) and store.has(parse_digest(local.digest))
    config = skopeo("inspect", "--config", f"oci:{store.root}:{daemon_image_name(ref)}")
    assert json.loads(config.stdout)["rootfs"]["diff_ids"] == from_daemon.diff_ids


def test_a_push_into_serve_never_replaces_the_pulled_image_of_that_name(
        store: BlobStore, registry: Registry, tmp_path: Path) -> None:
    mirrored = build_image(tmp_path / "m", [random_layer(20_000, 83)], tag="1")
    ref = push(mirrored.layout, "1", registry, "t/beta:1")
    pulled = pull(store, ref)
    pushed = build_image(tmp_path / "p", [random_layer(25_000, 84)], tag="1")
    with start(store, default_registry=registry.host, allow_push=True) as server:
        skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{pushed.layout}:1", f"docker://{server.host}/t/beta:1")
        answer = requests.get(f"{server.url}/v2/t/beta/manifests/1", headers={"Accept": MANIFEST}, timeout=10)
    assert answer.headers["Docker-Content-Digest"] == pushed.manifest_digest  # serve answers what was pushed
    names = {ref_name_of(entry): str(entry["digest"]) for entry in store.images()}
    assert names[ref] == pulled.digest == mirrored.manifest_digest  # the pulled image is untouched
    assert names[f"push:{ref}"] == pushed.manifest_digest
    gc(store, grace=0)
    assert store.has(parse_digest(pulled.digest)) and store.has(parse_digest(pushed.manifest_digest))
    assert pull(store, ref).digest == mirrored.manifest_digest
