"""The harness itself: the real services start, and test images reach them intact."""

from __future__ import annotations

import json
from pathlib import Path

from tests.images import build_image, load_into_daemon, push, random_layer
from tests.services import Daemon, Registry, skopeo


def test_registry_serves_pushed_image(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [random_layer(4096, 1), random_layer(20000, 2, compressible=True)])
    ref = push(image.layout, image.tag, registry, "harness/push:1")
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}").stdout)
    assert [layer["digest"] for layer in inspected["layers"]] == [layer.digest for layer in image.layers]
    assert any(r.path.endswith("/manifests/1") for r in registry.requests())


def test_daemon_loads_image_and_logs_calls(dockerd: Daemon, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", [random_layer(4096, 3), random_layer(8192, 4)])
    since = dockerd.mark()
    load_into_daemon(image.layout, image.tag, dockerd, "harness/daemon:1")
    inspect = dockerd.client().api.inspect_image("harness/daemon:1")
    assert inspect["RootFS"]["Layers"] == image.diff_ids
    assert any(method == "POST" and "/images/load" in path for method, path in dockerd.api_calls(since))
