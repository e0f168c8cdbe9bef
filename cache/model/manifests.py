"""Manifests, indexes, configs and platforms, parsed strictly from their exact bytes.

A manifest is always kept as the bytes that were received (its digest is over those bytes); the
parsed form is only for reading. Anything that does not follow the OCI / Docker schema 2 rules
raises :class:`InvalidManifest` with one line saying what is wrong.
"""

from __future__ import annotations

import json
import platform as host_platform
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from cache.errors import InvalidDigest, InvalidManifest
from cache.model.digest import Digest, parse_digest, sha256_of

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT_ALL = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's limit; larger is refused unread
MAX_CONFIG_BYTES = 64 * 1024 * 1024


def compression_of(media_type: str) -> str:
    """"gzip", "zstd" or "none" for a layer media type."""
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    return "none"


class Platform(NamedTuple):
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidManifest(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], like linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                "armv7l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
        variant = "v7" if machine == "armv7l" else None
        return cls("linux", arch.get(machine, machine), variant)

    @classmethod
    def from_json(cls, data: Any) -> Platform | None:
        if not isinstance(data, dict) or not isinstance(data.get("os"), str):
            return None
        arch = data.get("architecture")
        variant = data.get("variant")
        return cls(data["os"], arch if isinstance(arch, str) else "", variant if isinstance(variant, str) else None)

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (from an index) satisfies this wanted platform."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default_variant = {"arm64": "v8"}.get(other.architecture)
        return self.variant == (other.variant or default_variant)

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class Descriptor(NamedTuple):
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = MappingProxyType({})  # read-only: a default shared by all
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, what: str) -> Descriptor:
        if not isinstance(data, dict):
            raise InvalidManifest(f"{what}: descriptor is not an object")
        media_type, size = data.get("mediaType"), data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifest(f"{what}: descriptor has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"{what}: descriptor has no valid size")
        try:
            digest = parse_digest(data.get("digest"))  # type: ignore[arg-type]
        except InvalidDigest as error:
            raise InvalidManifest(f"{what}: {error}") from None
        annotations = data.get("annotations") or {}
        urls = data.get("urls") or []
        return cls(
            media_type,
            digest,
            size,
            Platform.from_json(data.get("platform")),
            {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
            tuple(str(u) for u in urls) if isinstance(urls, list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        return out


def _load_json(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise InvalidManifest(f"{what} is {len(data)} bytes, more than the {limit} allowed")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidManifest(f"{what} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return document


class Manifest(NamedTuple):
    """An image manifest (OCI or Docker schema 2) with the exact bytes it came from."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def digest(self) -> Digest:
        return sha256_of(self.raw)

    def descriptor(self, platform: Platform | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), platform)

    @property
    def artifact_type(self) -> str | None:
        """None for a container image; else what the artifact is: its ``artifactType``, or its
        config's media type when that is not an image config (OCI 1.1 artifacts: signatures, SBOMs,
        Helm charts, anything oras pushes). An artifact's blobs are not layers with diff_ids."""
        if self.config.media_type in IMAGE_CONFIG_TYPES and b'"artifactType"' not in self.raw:
            return None
        declared = _load_json(self.raw, "manifest", MAX_MANIFEST_BYTES).get("artifactType")
        return declared if isinstance(declared, str) and declared else self.config.media_type


class Index(NamedTuple):
    """An OCI index or Docker manifest list with the exact bytes it came from."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]

    @property
    def digest(self) -> Digest:
        return sha256_of(self.raw)

    def choose(self, wanted: Platform) -> Descriptor:
        for entry in self.manifests:
            if entry.media_type in MANIFEST_TYPES and entry.platform and wanted.matches(entry.platform):
                return entry
        offered = ", ".join(str(e.platform) for e in self.manifests if e.platform) or "none"
        raise InvalidManifest(f"no manifest for platform {wanted} (offered: {offered}); use --platform")

    def images(self) -> list[Descriptor]:
        """Entries that are image manifests for a real platform (attestations are skipped)."""
        return [
            e for e in self.manifests
            if e.media_type in MANIFEST_TYPES and e.platform is not None and e.platform.os != "unknown"
        ]


def parse_manifest_or_index(raw: bytes, content_type: str | None = None, what: str = "manifest") -> Manifest | Index:
    """Parse manifest bytes, deciding the kind from mediaType (or the Content-Type it came with)."""
    document = _load_json(raw, what, MAX_MANIFEST_BYTES)
    if document.get("schemaVersion") != 2:
        raise InvalidManifest(f"{what}: schemaVersion {document.get('schemaVersion')!r} is not supported (only 2)")
    media_type = document.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise InvalidManifest(f"{what}: index has no manifests list")
        return Index(raw, media_type, tuple(Descriptor.from_json(e, what) for e in entries))
    if media_type in MANIFEST_TYPES:
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise InvalidManifest(f"{what}: manifest has no layers list")
        return Manifest(
            raw,
            media_type,
            Descriptor.from_json(document.get("config"), f"{what} config"),
            tuple(Descriptor.from_json(layer, f"{what} layer") for layer in layers),
        )
    raise InvalidManifest(f"{what}: unsupported media type {media_type!r}")


class Children(NamedTuple):
    """What a manifest or index points at: an index's manifests (to walk on), or a manifest's
    config and layers (leaves, never read)."""

    is_index: bool
    digests: list[Digest]


def children_of(raw: bytes, what: str = "manifest") -> Children:
    """The blobs a manifest or index points at, read without building descriptors: the walk of gc,
    prune, ls and du over thousands of manifests. Raises InvalidManifest for anything else."""
    document = _load_json(raw, what, MAX_MANIFEST_BYTES)
    index = isinstance(document.get("manifests"), list)
    listed = document.get("manifests") if index else document.get("layers")
    if document.get("schemaVersion") != 2 or not isinstance(listed, list):
        raise InvalidManifest(f"{what}: neither an index nor an image manifest")
    entries = listed if index else [document.get("config"), *listed]
    try:
        return Children(index, [parse_digest(entry["digest"]) for entry in entries])
    except (TypeError, KeyError, InvalidDigest) as error:
        raise InvalidManifest(f"{what}: a descriptor without a valid digest ({error})") from None


def subject_of(raw: bytes) -> tuple[Digest, str] | None:
    """The subject a manifest names (OCI 1.1 referrers: a signature, SBOM or attestation names the
    image it describes) and its artifactType (or its config's media type); None when there is none
    or ``raw`` is not such a manifest."""
    try:
        document = _load_json(raw, "manifest", MAX_MANIFEST_BYTES)
        subject = document.get("subject")
        if not isinstance(subject, dict):
            return None
        config = document.get("config")
        kind = document.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else "")
        return parse_digest(subject.get("digest")), kind if isinstance(kind, str) else ""  # type: ignore[arg-type]
    except (InvalidManifest, InvalidDigest):
        return None


def parse_manifest(raw: bytes, content_type: str | None = None, what: str = "manifest") -> Manifest:
    parsed = parse_manifest_or_index(raw, content_type, what)
    if not isinstance(parsed, Manifest):
        raise InvalidManifest(f"{what} is an index, expected an image manifest")
    return parsed


class ImageConfig(NamedTuple):
    raw: bytes
    diff_ids: tuple[Digest, ...]
    platform: Platform | None

    @property
    def digest(self) -> Digest:
        return sha256_of(self.raw)


def artifact_config(raw: bytes) -> ImageConfig:
    """An artifact's config as the image model carries it: its bytes, no layers, no platform."""
    return ImageConfig(raw, (), None)


def parse_config(raw: bytes, what: str = "config") -> ImageConfig:
    document = _load_json(raw, what, MAX_CONFIG_BYTES)
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidManifest(f"{what}: no rootfs.diff_ids list")
    try:
        diff_ids = tuple(parse_digest(d) for d in rootfs["diff_ids"])
    except InvalidDigest as error:
        raise InvalidManifest(f"{what}: {error}") from None
    return ImageConfig(raw, diff_ids, Platform.from_json(document))


def build_index(manifests: list[Descriptor]) -> bytes:
    """Bytes of an OCI image index, serialised the same way every time (so the digest is stable)."""
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [m.to_json() for m in manifests]}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def build_manifest(config: Descriptor, layers: list[Descriptor]) -> bytes:
    """Bytes of an OCI image manifest, serialised the same way every time (so the digest is stable)."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
