"""Referrers made the way real clients make them, independently of layerhoard's code.

- oras (PyPI ``oras``) pushes an artifact whose ``subject`` names an image;
- distribution 2.8 has no referrers API, so, as the distribution spec asks of a client pushing to
  such a registry, the test keeps the referrers tag schema (``sha256-<hex>`` holding an index);
- cosign's format, written here by hand (Debian has no cosign): a manifest under the tag
  ``sha256-<hex>.sig`` whose layer is the simple-signing payload, with its ECDSA signature in the
  ``dev.cosignproject.cosign/signature`` annotation.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import oras.client
import oras.oci
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.images import OCI_INDEX, OCI_MANIFEST, sha256

SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
PROVENANCE = "https://slsa.dev/provenance/v0.2"


@dataclass
class Made:
    """A referrer as pushed: its manifest's exact bytes and every blob it names."""

    manifest: bytes
    blobs: dict[str, bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def document(self) -> bytes:
        """Its one layer's bytes (the SBOM document, the signed payload)."""
        layer = json.loads(self.manifest)["layers"][0]["digest"]
        return self.blobs[layer]


def push_blob(url: str, repo: str, data: bytes) -> str:
    digest = sha256(data)
    started = requests.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = location if location.startswith("http") else url + location
    done = requests.put(location, params={"digest": digest}, data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert done.status_code == 201, done.text
    return digest


def put_manifest(url: str, repo: str, reference: str, raw: bytes, media_type: str = OCI_MANIFEST) -> None:
    response = requests.put(f"{url}/v2/{repo}/manifests/{reference}", data=raw,
                            headers={"Content-Type": media_type}, timeout=10)
    assert response.status_code == 201, response.text


def oras_attach(host: str, repo: str, subject: str, subject_size: int, folder: Path,
                artifact_type: str = SBOM_TYPE) -> Made:
    """oras pushes a document with ``subject`` (config media type ``artifact_type``: what the
    referrers API lists as its artifactType) and tags it ``attached-<n>``."""
    folder.mkdir(parents=True, exist_ok=True)
    document = json.dumps({"spdxVersion": "SPDX-2.3", "name": os.urandom(8).hex()}).encode()
    (folder / "sbom.json").write_bytes(document)
    (folder / "config.json").write_bytes(b"{}")
    cwd = Path.cwd()
    os.chdir(folder)  # oras names the blob by its path relative to where it runs
    try:
        client = oras.client.OrasClient(hostname=host, insecure=True)
        tag = f"attached-{os.urandom(4).hex()}"
        response = client.push(
            target=f"{host}/{repo}:{tag}", files=[f"sbom.json:{artifact_type}"],
            manifest_config=f"config.json:{artifact_type}",
            subject=oras.oci.Subject(OCI_MANIFEST, subject, subject_size))
        assert response.status_code in (200, 201), response.text
    finally:
        os.chdir(cwd)
    raw = requests.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=10)
    return Made(raw.content, {sha256(document): document, sha256(b"{}"): b"{}"})


def write_tag_schema(url: str, repo: str, subject: str, referrers: list[Made], artifact_type: str = SBOM_TYPE) -> bytes:
    """The referrers tag schema's index for ``subject``, as a client keeps it on a registry
    without the referrers API."""
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": made.digest, "size": len(made.manifest), "artifactType": artifact_type}
        for made in referrers]}).encode()
    put_manifest(url, repo, f"sha256-{subject[7:]}", index, OCI_INDEX)
    return index


def cosign_sign(url: str, repo: str, subject: str, identity: str, suffix: str = "sig") -> Made:
    """A cosign-format signature of ``subject`` pushed to its tag ``sha256-<hex>.sig``; with
    ``suffix`` "att", an attestation as cosign writes it: a signed DSSE envelope of an in-toto
    statement, under ``sha256-<hex>.att``."""
    key = ec.generate_private_key(ec.SECP256R1())
    if suffix == "sig":
        payload = json.dumps({"critical": {"identity": {"docker-reference": identity},
                                           "image": {"docker-manifest-digest": subject},
                                           "type": "cosign container image signature"},
                              "optional": None}).encode()
        signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
        media_type, annotations = SIMPLESIGNING, {"dev.cosignproject.cosign/signature": signature}
    else:
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": PROVENANCE,
                                "subject": [{"name": identity, "digest": {"sha256": subject[7:]}}],
                                "predicate": {"builder": {"id": "tests"}}}).encode()
        signed = base64.b64encode(key.sign(statement, ec.ECDSA(hashes.SHA256()))).decode()
        payload = json.dumps({"payloadType": "application/vnd.in-toto+json",
                              "payload": base64.b64encode(statement).decode(),
                              "signatures": [{"keyid": "", "sig": signed}]}).encode()
        media_type, annotations = DSSE, {"dev.cosignproject.cosign/signature": "", "predicateType": PROVENANCE}
    config = json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z", "os": "",
                         "history": [{"created": "0001-01-01T00:00:00Z"}],
                         "rootfs": {"type": "layers", "diff_ids": [sha256(payload)]}, "config": {}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": push_blob(url, repo, config)},
        "layers": [{"mediaType": media_type, "size": len(payload), "digest": push_blob(url, repo, payload),
                    "annotations": annotations}],
    }).encode()
    put_manifest(url, repo, f"sha256-{subject[7:]}.{suffix}", manifest)
    return Made(manifest, {sha256(config): config, sha256(payload): payload})
