"""docker-daemon: through podman's Docker-compatible API (`podman system service`), as a new user
would point layerhoard at it: cold, cached and by image ID (issue 17 item 3).

podman keeps images in containers-storage, not in a dockerd layer store, so a cold pull streams
the save and says why (`fallback`); a cached one reads nothing. Witnesses: podman's own inspect
(the diff_ids and the image ID) and the store's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache.model.refs import DaemonSource
from cache.sources.daemon import pull_from_daemon
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import build_image, random_layer
from tests.services import skopeo, stop_process, unavailable, wait_until

NAME = "localhost/lh/podman-app:1"


class PodmanService:
    """`podman system service` on a socket of its own, over a private store (vfs, no mounts)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "podman.sock"
        self.host = f"unix://{self.socket}"
        self._log = open(workdir / "service.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*self.podman_args(), "system", "service", "--time=0", self.host],
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def podman_args(self) -> list[str]:
        return ["podman", "--root", str(self.workdir / "root"), "--runroot", str(self.workdir / "run"),
                "--storage-driver", "vfs", "--events-backend", "file"]

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.podman_args(), *args], capture_output=True, text=True, timeout=120)

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"podman system service exited with {self.process.returncode}")
        return self.socket.exists()

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman)")
    if os.geteuid() != 0:
        unavailable("podman with a private store in a temporary folder needs root here")
    workdir = Path(tempfile.mkdtemp(prefix="lh-pms-", dir="/tmp"))  # short: podman refuses a long runroot
    service = PodmanService(workdir)
    try:
        try:
            wait_until(service.answers, 30, "podman system service")
        except RuntimeError as error:
            unavailable(str(error))
        layout = build_image(tmp_path_factory.mktemp("podman-image") / "layout",
                             [random_layer(300_000, 1721), random_layer(40_000, 1722)], tag="t")
        archive = layout.layout.parent / "app.tar"
        skopeo("copy", "--quiet", f"oci:{layout.layout}:t", f"docker-archive:{archive}:{NAME}")
        loaded = service.podman("load", "-i", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _inspected(podman: PodmanService) -> tuple[str, list[str]]:
    import json

    info = json.loads(podman.podman("image", "inspect", NAME).stdout)[0]
    return info["Id"], info["RootFS"]["Layers"]


def test_cold_then_cached_then_by_id(podman: PodmanService, store: BlobStore) -> None:
    image_id, diff_ids = _inspected(podman)
    cold = pull_from_daemon(store, DaemonSource(NAME), docker_host=podman.host)
    assert cold.route == "docker save" and "not a dockerd data root" in (cold.fallback or "")
    assert [layer.diff_id for layer in cold.layers] == diff_ids and not any(layer.reused for layer in cold.layers)
    assert cold.ref == f"docker-daemon:{NAME}"
    assert str(load_image(store, cold.ref).config.digest) == f"sha256:{image_id.removeprefix('sha256:')}"

    blobs = set(os.listdir(store.blobs_dir))
    cached = pull_from_daemon(store, DaemonSource(NAME), docker_host=podman.host)
    assert cached.route == "store" and cached.bytes_fetched == 0 and cached.digest == cold.digest
    assert set(os.listdir(store.blobs_dir)) == blobs

    by_id = pull_from_daemon(store, DaemonSource(image_id.removeprefix("sha256:")[:12]), docker_host=podman.host)
    assert by_id.route == "store" and by_id.ref == cold.ref and by_id.digest == cold.digest
