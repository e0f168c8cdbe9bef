"""Test images of chosen sizes and layer counts, built as OCI layouts by code independent of ours.

Layers are real tar files (random or compressible content); images are written with plain
json/tarfile/gzip here, then pushed into the registry and loaded into the daemon with skopeo and
docker, so a bug in layerhoard's own writers cannot hide a bug in its readers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from tests.services import Daemon, Registry, skopeo

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    """A reproducible layer tar holding ``files`` (path → content), folders created as needed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for path, content in sorted(files.items()):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = "/".join(parts[:i])
                if folder not in made:
                    made.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def random_layer(size: int, seed: int, compressible: bool = False, name: str = "data.bin") -> bytes:
    """A layer tar with one file of about ``size`` bytes: random, or text that compresses well."""
    rng = random.Random(seed)
    if compressible:
        words = [bytes(rng.choice(b"abcdefghij") for _ in range(8)) for _ in range(64)]
        content = b" ".join(rng.choice(words) for _ in range(size // 9 + 1))[:size]
    else:
        content = rng.randbytes(size)
    return tar_of({f"layer{seed}/{name}": content})


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Layer:
    digest: str
    diff_id: str
    size: int
    media_type: str


@dataclass
class TestImage:
    __test__ = False  # not a pytest test class
    layout: Path
    tag: str
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    layers: list[Layer] = field(default_factory=list)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


class LayoutWriter:
    """Writes blobs and index.json of an OCI layout, independently of layerhoard's code."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> str:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return digest

    def tag(self, tag: str, media_type: str, digest: str, size: int) -> None:
        index_path = self.root / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
        index["manifests"] = [
            m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
        index["manifests"].append({
            "mediaType": media_type, "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        })
        index_path.write_text(json.dumps(index))


def build_image(
    layout: Path,
    layer_tars: list[bytes],
    *,
    tag: str = "latest",
    compression: str = "gzip",
    platform: tuple[str, str] = ("linux", "amd64"),
    label: str = "",
    write_tag: bool = True,
) -> TestImage:
    """Write one image (config, layers, manifest) into the OCI layout ``layout``."""
    writer = LayoutWriter(layout)
    layers = []
    for tar in layer_tars:
        blob = compress(tar, compression)
        layers.append(Layer(writer.blob(blob), sha256(tar), len(blob), LAYER_TYPES[compression]))
    config = json.dumps({
        "architecture": platform[1], "os": platform[0],
        "config": {"Labels": {"test": label}} if label else {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }, sort_keys=True).encode()
    config_digest = writer.blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers],
    }, sort_keys=True).encode()
    manifest_digest = writer.blob(manifest)
    if write_tag:
        writer.tag(tag, OCI_MANIFEST, manifest_digest, len(manifest))
    return TestImage(layout, tag, manifest_digest, manifest, config_digest, config, layers)


def build_index(layout: Path, images: list[TestImage], platforms: list[tuple[str, str]], tag: str) -> tuple[str, bytes]:
    """An OCI index over ``images`` (one per platform), tagged ``tag`` in the layout."""
    writer = LayoutWriter(layout)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest),
             "platform": {"os": os_name, "architecture": arch}}
            for image, (os_name, arch) in zip(images, platforms, strict=True)
        ],
    }, sort_keys=True).encode()
    digest = writer.blob(index)
    writer.tag(tag, OCI_INDEX, digest, len(index))
    return digest, index


def push(layout: Path, tag: str, registry: Registry, repo_tag: str, *, all_platforms: bool = False) -> str:
    """skopeo copy the layout's ``tag`` into the registry as ``repo_tag``; returns the full reference."""
    target = f"{registry.host}/{repo_tag}"
    extra = ["--all"] if all_platforms else []
    skopeo("copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests", *extra,
           f"oci:{layout}:{tag}", f"docker://{target}")
    return target


def load_into_daemon(layout: Path, tag: str, daemon: Daemon, name: str) -> None:
    """Put the layout's image into the daemon as ``name`` (skopeo to docker-archive, then docker load)."""
    archive = layout.parent / f"{layout.name}-{tag}.tar"
    archive.unlink(missing_ok=True)
    skopeo("copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{archive}:{name}")
    daemon.docker("load", "-i", str(archive), check=True)
    archive.unlink()
