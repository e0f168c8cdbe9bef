"""Registry credentials as Docker stores them, and Basic auth where a registry asks for it."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.errors import SourceError
from cache.model.refs import ImageRef
from cache.registry.client import RegistryClient, RetryPolicy
from cache.registry.credentials import Credentials, lookup
from cache.sources.registry import pull_from_registry
from cache.store.blobstore import BlobStore
from tests.faultserver import FaultRegistry
from tests.images import OCI_MANIFEST, build_image, random_layer


def write_config(folder: Path, config: dict[str, object]) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real docker-credential-test program on PATH that answers for one registry."""
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "docker-credential-test"
    program.write_text(
        "#!/bin/sh\n"
        "read host\n"
        'if [ "$1" = get ] && [ "$host" = ghcr.io ]; then\n'
        '  echo \'{"ServerURL": "ghcr.io", "Username": "robot", "Secret": "s3cret"}\'\n'
        "else echo 'credentials not found in native keychain' >&2; exit 1; fi\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    yield folder


def test_inline_auth_entry(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    path = write_config(tmp_path, {"auths": {"registry.example.com": {"auth": encoded}}})
    assert lookup("registry.example.com", path) == Credentials("alice", "pa:ss")
    assert lookup("other.example.com", path) is None


def test_docker_hub_key(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"bob:pw").decode()
    path = write_config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": encoded}}})
    assert lookup("docker.io", path) == Credentials("bob", "pw")


def test_cred_helper_and_creds_store(tmp_path: Path, helper_bin: Path) -> None:
    path = write_config(tmp_path, {"credHelpers": {"ghcr.io": "test"}})
    assert lookup("ghcr.io", path) == Credentials("robot", "s3cret")
    store_path = write_config(tmp_path, {"credsStore": "test"})
    assert lookup("ghcr.io", store_path) == Credentials("robot", "s3cret")
    assert lookup("quay.io", store_path) is None  # the helper's "not found" means anonymous


def test_missing_helper_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"credsStore": "nosuchhelper"})
    with pytest.raises(SourceError, match="docker-credential-nosuchhelper is not installed"):
        lookup("ghcr.io", path)


def test_secret_is_never_printed() -> None:
    assert "s3cret" not in repr(Credentials("robot", "s3cret"))


def test_basic_auth_where_the_registry_asks(tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [random_layer(5000, 1)])
    blobs = {f"sha256:{p.name}": p.read_bytes() for p in (image.layout / "blobs" / "sha256").iterdir()}
    expected = "Basic " + base64.b64encode(b"alice:pw").decode()
    with FaultRegistry("team/app", {"1": (image.manifest, OCI_MANIFEST)}, blobs).running() as server:
        server.faults.basic_required = expected
        ref = ImageRef.parse(f"{server.host}/team/app:1")
        anonymous = RegistryClient(ref.registry, credentials=None, retry=RetryPolicy(attempts=1))
        anonymous._credentials_loaded = True  # this machine's docker config plays no part
        with pytest.raises(SourceError, match="access denied"):
            pull_from_registry(BlobStore(tmp_path / "c1"), ref, client=anonymous)
        server.seen.clear()
        client = RegistryClient(ref.registry, credentials=Credentials("alice", "pw"))
        report = pull_from_registry(BlobStore(tmp_path / "c2"), ref, client=client)
    assert report.digest == image.manifest_digest
    assert "Authorization" not in server.seen[0].headers  # nothing is sent until the registry asks
    assert all(s.headers.get("Authorization") == expected for s in server.seen[1:])
    assert all(s.headers["User-Agent"].startswith("layerhoard/") for s in server.seen)
