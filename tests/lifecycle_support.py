"""Shared helpers of the lifecycle tests: small images in the registry, the CLI in a process, checks."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cache.formats.index_json import REF_NAME
from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore
from cache.store.images import missing_blobs
from tests.images import TestImage, build_image, push, random_layer
from tests.services import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Pushed:
    ref: str  # the full reference, as index.json names it
    image: TestImage


def push_images(registry: Registry, root: Path, repo: str, specs: dict[str, list[bytes]]) -> dict[str, Pushed]:
    """Build one image per (name, layer tars) and push each as ``<registry>/<repo>/<name>:1``."""
    out = {}
    for name, layers in specs.items():
        image = build_image(root / name, layers, tag="1")
        out[name] = Pushed(push(image.layout, "1", registry, f"{repo}/{name}:1"), image)
    return out


def small_specs(prefix_seed: int) -> dict[str, list[bytes]]:
    """a and b share a base layer; c stands alone. Layers are random (incompressible) so sizes are known."""
    base = random_layer(120_000, prefix_seed)
    return {
        "a": [base, random_layer(60_000, prefix_seed + 1)],
        "b": [base, random_layer(50_000, prefix_seed + 2)],
        "c": [random_layer(80_000, prefix_seed + 3)],
    }


def run_cli(cache: Path, *args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """layerhoard in a process of its own (stdout/stderr exactly as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "cli.main", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout, **kwargs)  # type: ignore[call-overload]


def refs(store: BlobStore) -> set[str]:
    return {str((entry.get("annotations") or {}).get(REF_NAME)) for entry in store.images()}  # type: ignore[union-attr]


def image_blobs(image: TestImage) -> set[str]:
    return {image.manifest_digest, image.config_digest, *(layer.digest for layer in image.layers)}


def stored(store: BlobStore) -> set[str]:
    return {str(d) for d in store.digests()}


def assert_store_sound(store: BlobStore) -> None:
    """index.json parses, every image it lists is complete, every blob hashes to its name,
    and nothing partial is visible in blobs/."""
    json.loads(store.index_path.read_bytes())
    for entry in store.images():
        assert missing_blobs(store, parse_digest(entry["digest"])) == [], entry  # type: ignore[arg-type]
    checked, corrupt = store.verify(full=True)
    assert corrupt == []
    assert checked == len(list(store.digests()))
