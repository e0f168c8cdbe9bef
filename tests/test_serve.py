"""`serve` against real clients: skopeo and the private dockerd pull from it, skopeo pushes into it,
and a pull-through with the real registry as upstream fetches each blob once."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cache.ingest.pull import PullOptions, pull
from cache.model.digest import parse_digest
from cache.server import RegistryServer, ServeOptions, make_server
from cache.store.blobstore import BlobStore
from tests.images import TestImage, build_image, push, random_layer
from tests.services import Daemon, Registry, free_port, in_thread, skopeo, wait_until

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def cached(store: BlobStore, tmp_path: Path, name: str, seed: int = 1) -> TestImage:
    image = build_image(tmp_path / f"src-{seed}", [random_layer(5000, seed), random_layer(300_000, seed + 1, True)],
                        tag="t")
    pull(store, f"oci:{image.layout}:t", PullOptions(name=name))
    return image


@contextlib.contextmanager
def start(store: BlobStore, **options: object) -> Iterator[RegistryServer]:
    server = make_server(store, ServeOptions(listen="127.0.0.1:0", **options))  # type: ignore[arg-type]
    with in_thread(server):
        yield server


@pytest.fixture
def served(store: BlobStore) -> Iterator[RegistryServer]:
    with start(store, allow_push=True) as server:
        yield server


def errors_of(response: requests.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]


def test_skopeo_copies_by_tag_and_by_digest(store: BlobStore, tmp_path: Path, served: RegistryServer) -> None:
    image = cached(store, tmp_path, "docker.io/library/web:1")
    by_tag, by_digest = tmp_path / "by-tag", tmp_path / "by-digest"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{served.host}/web:1", f"oci:{by_tag}:x")
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{served.host}/library/web@{image.manifest_digest}",
           f"oci:{by_digest}:x")
    for layout in (by_tag, by_digest):
        assert json.loads(skopeo("inspect", f"oci:{layout}:x").stdout)["Digest"] == image.manifest_digest
        config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:x").stdout)
        assert config["rootfs"]["diff_ids"] == image.diff_ids


@pytest.mark.daemon
def test_dockerd_pulls_from_serve(store: BlobStore, tmp_path: Path, served: RegistryServer, dockerd: Daemon) -> None:
    image = cached(store, tmp_path, "docker.io/team/daemonpull:2", seed=11)
    result = dockerd.docker("pull", f"{served.host}/team/daemonpull:2")
    assert result.returncode == 0, result.stderr.decode()
    inspect = dockerd.client().api.inspect_image(f"{served.host}/team/daemonpull:2")
    assert inspect["RootFS"]["Layers"] == image.diff_ids


def test_blob_range_head_and_digest_header(store: BlobStore, tmp_path: Path, served: RegistryServer) -> None:
    image = cached(store, tmp_path, "docker.io/library/ranges:1")
    layer = image.layers[1]
    data = (image.layout / "blobs" / "sha256" / layer.digest[7:]).read_bytes()
    url = f"{served.url}/v2/ranges/blobs/{layer.digest}"

    whole = requests.get(url)
    head = requests.head(url)
    part = requests.get(url, headers={"Range": "bytes=100-1099"})
    tail = requests.get(url, headers={"Range": "bytes=-10"})
    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"})

    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Docker-Content-Digest"] == layer.digest and whole.headers["Accept-Ranges"] == "bytes"
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == layer.digest
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert beyond.status_code == 416 and errors_of(beyond) == ["RANGE_INVALID"]
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_manifests_tags_catalog_and_namespaces(store: BlobStore, tmp_path: Path, served: RegistryServer) -> None:
    image = cached(store, tmp_path, "docker.io/library/names:1")
    cached(store, tmp_path, "docker.io/library/names:2", seed=3)
    cached(store, tmp_path, "registry.example:5000/team/app:7", seed=5)
    base = f"{served.url}/v2"

    manifest = requests.get(f"{base}/names/manifests/1", headers={"Accept": OCI_MANIFEST})
    head = requests.head(f"{base}/library/names/manifests/1")
    docker_only = requests.get(f"{base}/names/manifests/1", headers={"Accept": DOCKER_V2})
    namespaced = requests.get(f"{base}/team/app/manifests/7?ns=registry.example:5000")

    assert manifest.status_code == 200 and manifest.content == image.manifest
    assert manifest.headers["Content-Type"] == OCI_MANIFEST
    assert manifest.headers["Docker-Content-Digest"] == image.manifest_digest
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(image.manifest))
    assert docker_only.status_code == 404 and errors_of(docker_only) == ["MANIFEST_UNKNOWN"]
    assert namespaced.status_code == 200 and namespaced.headers["OCI-Namespace"] == "registry.example:5000"
    assert requests.get(f"{base}/team/app/manifests/7").status_code == 404
    assert requests.get(f"{base}/names/tags/list").json() == {"name": "names", "tags": ["1", "2"]}
    first_page = requests.get(f"{base}/names/tags/list?n=1")
    assert first_page.json()["tags"] == ["1"] and 'last=1>; rel="next"' in first_page.headers["Link"]
    assert requests.get(f"{base}/_catalog").json() == {"repositories": ["library/names"]}
    assert requests.get(f"{base}/_catalog?ns=registry.example:5000").json() == {"repositories": ["team/app"]}


def test_bad_requests_get_spec_errors(store: BlobStore, tmp_path: Path, served: RegistryServer) -> None:
    image = cached(store, tmp_path, "docker.io/library/errs:1")
    base = f"{served.url}/v2"
    cases = {
        f"{base}/nothing/manifests/1": (404, "NAME_UNKNOWN"),
        f"{base}/errs/manifests/2": (404, "MANIFEST_UNKNOWN"),
        f"{base}/errs/manifests/sha256:{'0' * 64}": (404, "MANIFEST_UNKNOWN"),
        f"{base}/errs/manifests/sha256:xyz": (400, "DIGEST_INVALID"),
        f"{base}/errs/blobs/sha256:{'0' * 64}": (404, "BLOB_UNKNOWN"),
        f"{base}/errs/blobs/sha256:..%2F..%2Fetc%2Fpasswd": (400, "DIGEST_INVALID"),
        f"{base}/errs/blobs/md5:abc": (400, "DIGEST_INVALID"),
        f"{base}/Errs/tags/list": (400, "NAME_INVALID"),
        f"{base}/nothing/tags/list": (404, "NAME_UNKNOWN"),
    }
    for url, (status, code) in cases.items():
        response = requests.get(url)
        assert (response.status_code, errors_of(response)) == (status, [code]), url
    for raw_path in ("/v2/../../etc/passwd/manifests/1", "/v2/a/%2e%2e/b/manifests/1", "/v2/a//b/tags/list"):
        connection = http.client.HTTPConnection(served.host)
        connection.request("GET", raw_path)
        response = connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 400 and body["errors"][0]["code"] == "NAME_INVALID", raw_path
        connection.close()
    deleted = requests.delete(f"{base}/errs/manifests/{image.manifest_digest}")
    assert deleted.status_code == 405 and errors_of(deleted) == ["UNSUPPORTED"]
    assert "Traceback" not in deleted.text


def test_read_only_server_refuses_pushes(store: BlobStore) -> None:
    with start(store) as server:
        response = requests.post(f"{server.url}/v2/x/blobs/uploads/")
        assert response.status_code == 405 and errors_of(response) == ["UNSUPPORTED"]


def test_pushes_monolithic_chunked_and_mount(store: BlobStore, tmp_path: Path, served: RegistryServer) -> None:
    image = build_image(tmp_path / "push", [random_layer(4000, 21), random_layer(90_000, 22)], tag="t")
    skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{image.layout}:t", f"docker://{served.host}/pushed/app:1")
    assert store.image_descriptor("push:docker.io/pushed/app:1")["digest"] == image.manifest_digest  # type: ignore[index]
    out = tmp_path / "back"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{served.host}/pushed/app:1", f"oci:{out}:x")
    assert json.loads(skopeo("inspect", "--config", f"oci:{out}:x").stdout)["rootfs"]["diff_ids"] == image.diff_ids

    base = f"{served.url}/v2/chunks/app/blobs"
    blob = b"0123456789" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    started = requests.post(f"{base}/uploads/")
    location = served.url + started.headers["Location"]
    assert started.status_code == 202
    first = requests.patch(location, data=blob[:4000], headers={"Content-Range": "0-3999"})
    wrong = requests.patch(location, data=blob[4000:5000], headers={"Content-Range": "10-1009"})
    second = requests.patch(location, data=iter([blob[4000:7000]]))  # chunked transfer encoding
    bad_digest = requests.put(f"{location}?digest=sha256:{'1' * 64}", data=blob[7000:])
    assert first.status_code == 202 and first.headers["Range"] == "0-3999"
    assert wrong.status_code == 416 and errors_of(wrong) == ["RANGE_INVALID"]
    assert second.status_code == 202 and second.headers["Range"] == "0-6999"
    assert bad_digest.status_code == 400 and errors_of(bad_digest) == ["DIGEST_INVALID"]
    assert not store.has(parse_digest(f"sha256:{'1' * 64}"))

    restarted = served.url + requests.post(f"{base}/uploads/").headers["Location"]
    requests.patch(restarted, data=blob[:5000])
    done = requests.put(f"{restarted}?digest={digest}", data=blob[5000:])
    assert done.status_code == 201 and done.headers["Docker-Content-Digest"] == digest
    assert store.read_bytes(parse_digest(digest)) == blob

    mounted = requests.post(f"{served.url}/v2/other/app/blobs/uploads/?mount={digest}&from=chunks/app")
    assert mounted.status_code == 201 and mounted.headers["Location"] == f"/v2/other/app/blobs/{digest}"
    orphan_manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                             "digest": f"sha256:{'2' * 64}", "size": 2},
                                  "layers": []})
    refused = requests.put(f"{served.url}/v2/other/app/manifests/9", data=orphan_manifest,
                           headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert refused.status_code == 400 and errors_of(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    assert store.image_descriptor("docker.io/other/app:9") is None


@pytest.mark.registry
def test_pull_through_fetches_each_blob_once(store: BlobStore, tmp_path: Path, registry: Registry) -> None:
    image = build_image(tmp_path / "up", [random_layer(3_000_000, 31), random_layer(50_000, 32)], tag="t")
    push(image.layout, "t", registry, "through/app:1")
    with start(store, default_registry=registry.host, upstreams={registry.host: registry.url}) as server:
        since = registry.mark()
        source = f"docker://{server.host}/through/app:1"
        head = requests.head(f"{server.url}/v2/through/app/blobs/{image.layers[0].digest}")
        assert head.status_code == 200 and head.headers["Content-Length"] == str(image.layers[0].size)
        assert not store.has(parse_digest(image.layers[0].digest))  # a HEAD fetches nothing

        def copy(index: int) -> None:
            skopeo("copy", "--quiet", "--src-tls-verify=false", source, f"oci:{tmp_path / f'client-{index}'}:x")

        with ThreadPoolExecutor(3) as pool:  # three clients at once: still one upstream GET per blob
            list(pool.map(copy, range(3)))
        fetched = sorted(r.path for r in registry.blob_requests(since))
        assert fetched == sorted(f"/v2/through/app/blobs/{d}" for d in [image.config_digest,
                                                                          *(la.digest for la in image.layers)])
        assert store.image_descriptor(f"{registry.host}/through/app:1") is not None

        since = registry.mark()
        copy(9)
        assert registry.blob_requests(since) == []
        for index in (0, 1, 2, 9):
            config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / f'client-{index}'}:x").stdout)
            assert config["rootfs"]["diff_ids"] == image.diff_ids


def test_cli_serve_subprocess(store: BlobStore, tmp_path: Path) -> None:
    cached(store, tmp_path, "docker.io/library/clisrv:1")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "--cache-dir", str(store.root), "serve",
                                "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200, 20, "serve")
        assert requests.get(f"http://127.0.0.1:{port}/v2/clisrv/tags/list").json()["tags"] == ["1"]
    finally:
        process.terminate()
        process.wait(10)
