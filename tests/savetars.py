"""`docker save` tarballs written by the tests themselves, in each layout layerhoard must read.

    legacy       dockerd < 25: <id>/VERSION, <id>/json, <id>/layer.tar, <config>.json, manifest.json
    oci          Docker 25+ with a graph driver: uncompressed blobs/sha256/<diff_id>, index.json,
                 manifest.json, oci-layout, legacy folders whose layer.tar links into blobs/
    containerd   Docker 25+ with the containerd image store: the registry's gzip blobs, index.json
                 pointing at a nested image index, manifest.json
    index-only   as containerd, without manifest.json (an OCI archive)

Members are written in name order, as dockerd's tar of its temporary folder does, so a link can
come before the member it points at. Independent of layerhoard's code on purpose.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class SaveTar:
    path: Path
    config: bytes
    diff_ids: list[str]
    blob_digests: list[str]  # what each layer is in the tar: the diff_id, or the gzip blob's digest

    @property
    def image_id(self) -> str:
        return sha256(self.config)


def config_for(diff_ids: list[str], label: str = "") -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Labels": {"t": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
    }, sort_keys=True).encode()


def write_save_tar(
    path: Path,
    layers: list[bytes],
    layout: str = "legacy",
    *,
    repo_tags: list[str] | None = None,
    link: str = "symlink",
    label: str = "",
) -> SaveTar:
    """Write a docker save tarball of an image with ``layers`` (uncompressed layer tars)."""
    diff_ids = [sha256(layer) for layer in layers]
    config = config_for(diff_ids, label)
    files: dict[str, bytes] = {}
    links: dict[str, tuple[str, str]] = {}  # path -> (kind, target as written in the tar)
    tags = repo_tags if repo_tags is not None else ["app:1"]
    if layout == "legacy":
        layer_paths, first_path = [], {}
        for i, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
            folder = hashlib.sha256(f"{i}{diff_id}".encode()).hexdigest()
            files[f"{folder}/VERSION"] = b"1.0"
            files[f"{folder}/json"] = json.dumps({"id": folder}).encode()
            if diff_id in first_path:
                target = first_path[diff_id]
                links[f"{folder}/layer.tar"] = (
                    ("sym", f"../{target}") if link == "symlink" else ("hard", target)
                )
            else:
                files[f"{folder}/layer.tar"] = layer
                first_path[diff_id] = f"{folder}/layer.tar"
            layer_paths.append(f"{folder}/layer.tar")
        config_path = f"{sha256(config)[7:]}.json"
        files[config_path] = config
        files["manifest.json"] = json.dumps([{"Config": config_path, "RepoTags": tags, "Layers": layer_paths}]).encode()
        files["repositories"] = b"{}"
        blob_digests = diff_ids
    else:
        compressed = layout in ("containerd", "index-only")
        blobs = [gzip.compress(layer, compresslevel=1, mtime=0) if compressed else layer for layer in layers]
        blob_digests = [sha256(blob) for blob in blobs]
        layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compressed else "")
        for blob in blobs:
            files[f"blobs/sha256/{sha256(blob)[7:]}"] = blob
        files[f"blobs/sha256/{sha256(config)[7:]}"] = config
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": sha256(b), "size": len(b)} for b in blobs],
        }).encode()
        files[f"blobs/sha256/{sha256(manifest)[7:]}"] = manifest
        top = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}
        if compressed:  # the registry's index, with a platform the save does not include
            absent = "sha256:" + "e" * 64
            nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {**top, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": absent, "size": 500,
                 "platform": {"os": "linux", "architecture": "arm64"}},
            ]}).encode()
            files[f"blobs/sha256/{sha256(nested)[7:]}"] = nested
            top = {"mediaType": OCI_INDEX, "digest": sha256(nested), "size": len(nested)}
        files["index.json"] = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {**top, "annotations": {"io.containerd.image.name": tags[0] if tags else ""}}]}).encode()
        files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
        if layout != "index-only":
            paths = [f"blobs/sha256/{d[7:]}" for d in blob_digests]
            files["manifest.json"] = json.dumps([{
                "Config": f"blobs/sha256/{sha256(config)[7:]}", "RepoTags": tags, "Layers": paths,
            }]).encode()
        if layout == "oci":  # Docker 25 keeps the legacy folders, their layer.tar a link into blobs/
            for i, diff_id in enumerate(diff_ids):
                folder = hashlib.sha256(f"legacy{i}".encode()).hexdigest()
                files[f"{folder}/VERSION"] = b"1.0"
                links[f"{folder}/layer.tar"] = ("sym", f"../blobs/sha256/{diff_id[7:]}")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(set(files) | set(links)):
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if name in links:
                kind, target = links[name]
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
    return SaveTar(path, config, diff_ids, blob_digests)
