"""Rebuild examples/hello, the tiny OCI layout the README's first command pulls (no network needed).

Deterministic: running it again gives the same bytes, so the committed layout never drifts.
    python examples/make_hello.py
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).parent / "hello"
FILES = {
    "etc/os-release": b'NAME="layerhoard example"\nID=example\nVERSION_ID="1.0"\n',
    "hello.txt": b"Hello from a layer that layerhoard cached.\n",
}


def blob(data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (ROOT / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (ROOT / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("etc")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, content in FILES.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def main() -> None:
    tar = layer_tar()
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **blob(gzip.compress(tar, compresslevel=9, mtime=0))}
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [layer],
    }, sort_keys=True).encode()
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
             "annotations": {"org.opencontainers.image.ref.name": "1.0"}}
    (ROOT / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
    (ROOT / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
