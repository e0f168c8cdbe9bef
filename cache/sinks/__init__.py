"""Sinks: write a cached image out as an OCI layout, a `docker load` tarball, or into the daemon.

    export(store, image, "oci:DIR[:TAG]" | "docker-archive:FILE[:NAME:TAG]" | "docker-archive:-"
                         | "docker-daemon:NAME:TAG", compression="keep")

Each sink takes an image whose blobs are all stored; ``compression`` other than "keep" transcodes
the layers first (cache.sinks.transcode), keeping the result in the store for the next export.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cache.errors import BlobNotFound, InvalidReference, evicted_while_read
from cache.model.digest import Digest
from cache.model.manifests import OCI_INDEX, Descriptor, build_index
from cache.model.refs import ImageRef
from cache.sinks.archive import write_archive
from cache.sinks.daemon import load_into_daemon
from cache.sinks.layout import write_attachments, write_layout
from cache.sinks.transcode import COMPRESSIONS, TRANSCODE_SOURCE, LayerOutcome, transcode
from cache.store.blobstore import BlobStore
from cache.store.fsutil import replacing
from cache.store.graph import link_derived
from cache.store.images import CachedImage, load_manifest

# dockerd before 23 cannot decompress zstd layers in `docker load` (moby#41759 landed in 23.0)
DOCKER_UNREADABLE = ("zstd",)


@dataclass(frozen=True)
class Destination:
    kind: str  # "oci", "docker-archive", "docker-daemon"
    path: str  # folder, file, "-" (stdout), or the daemon name
    name: str | None  # the tag in the layout, or the RepoTag in the tarball


def parse_destination(text: str) -> Destination:
    transport, sep, body = text.partition(":")
    if not sep or not body:
        raise InvalidReference(f"invalid destination {text!r}: use oci:DIR[:TAG], docker-archive:FILE|- "
                               "or docker-daemon:NAME:TAG")
    if transport == "oci":
        path, _, tag = body.partition(":")
        return Destination("oci", path, tag or None)
    if transport == "docker-archive":
        path, _, name = body.partition(":")
        if name:
            ImageRef.parse(name)
        return Destination("docker-archive", path, name or None)
    if transport == "docker-daemon":
        ImageRef.parse(body)
        if ":" not in body.rsplit("/", 1)[-1]:
            raise InvalidReference(f"docker-daemon:{body} needs a tag, like docker-daemon:{body}:latest")
        return Destination("docker-daemon", body, body)
    raise InvalidReference(f"unsupported destination transport {transport!r}: use oci:, docker-archive: "
                           "or docker-daemon:")


@dataclass
class ExportReport:
    ref: str
    destination: str
    digest: str  # the manifest exported (differs from the cached one after transcoding)
    compression: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    linked: int = 0
    copied: int = 0
    bytes_written: int = 0
    changed: bool = True
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export(
    store: BlobStore, image: CachedImage, destination: str, compression: str = "keep",
    *, docker_host: str | None = None,
) -> ExportReport:
    """Write ``image`` to ``destination``; see the module docstring for the forms it takes."""
    try:
        return _export(store, image, destination, compression, docker_host)
    except BlobNotFound as error:  # a prune evicted the image while it was being written out
        raise evicted_while_read(image.ref, error) from None


def _export(store: BlobStore, image: CachedImage, destination: str, compression: str,
            docker_host: str | None) -> ExportReport:
    started = time.monotonic()
    dest = parse_destination(destination)
    if compression not in COMPRESSIONS:
        raise InvalidReference(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if dest.kind == "oci" and image.platforms is not None and not image.chosen:
        return _export_platforms(store, image, dest, destination, compression, started)
    if dest.kind != "oci":
        image.require_image(f"export to {dest.kind}:")
    avoid = DOCKER_UNREADABLE if dest.kind != "oci" else ()
    result = transcode(store, image, compression, avoid=avoid)
    manifest = result.manifest
    report = ExportReport(image.ref, destination, str(manifest.digest), compression,
                          [_layer_json(outcome) for outcome in result.layers])
    if dest.kind == "oci":
        blobs = [manifest.config.digest, *(layer.digest for layer in manifest.layers), manifest.digest]
        placed = write_layout(store, blobs, manifest.descriptor(image.config.platform), Path(dest.path),
                              dest.name or image.ref)
        placed += write_attachments(store, [manifest.digest], Path(dest.path))
        report.linked, report.copied, report.bytes_written = placed.linked, placed.copied, placed.copied_bytes
        report.changed = bool(placed.linked or placed.copied or placed.index_changed)
    elif dest.kind == "docker-archive":
        tags = [dest.name or _tag_of(image.ref)]
        with output_stream(dest.path) as out:
            report.bytes_written = write_archive(store, manifest, [t for t in tags if t], out).bytes_written
    else:
        report.bytes_written = load_into_daemon(store, manifest, dest.path, docker_host)
    store.index.touch_image(image.ref)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _export_platforms(store: BlobStore, image: CachedImage, dest: Destination, destination: str,
                      compression: str, started: float) -> ExportReport:
    """A multi-platform name to an OCI layout: every stored platform, under one index. The
    original index when every platform is stored and nothing was transcoded (byte for byte); else
    an index of what is stored, kept in the store and linked from the original."""
    platforms = image.platforms
    assert platforms is not None
    entries: list[Descriptor] = []
    blobs: list[Digest] = []
    report = ExportReport(image.ref, destination, "", compression)
    for entry in image.stored_platforms():
        result = transcode(store, load_manifest(store, image.ref, entry.digest), compression)
        manifest = result.manifest
        blobs += [manifest.config.digest, *(layer.digest for layer in manifest.layers), manifest.digest]
        entries.append(entry if manifest.digest == entry.digest else
                       entry._replace(media_type=manifest.media_type, digest=manifest.digest, size=len(manifest.raw)))
        report.layers += [_layer_json(outcome) for outcome in result.layers]
    if entries == list(platforms.manifests):
        top = Descriptor(platforms.media_type, platforms.digest, len(platforms.raw))
    else:
        raw = build_index(entries)
        top = Descriptor(OCI_INDEX, store.put_bytes(raw, OCI_INDEX, TRANSCODE_SOURCE), len(raw))
        link_derived(store, platforms.digest, top.digest)
    placed = write_layout(store, [*blobs, top.digest], top, Path(dest.path), dest.name or image.ref)
    placed += write_attachments(store, [top.digest, *(entry.digest for entry in entries)], Path(dest.path))
    report.digest = str(top.digest)
    report.linked, report.copied, report.bytes_written = placed.linked, placed.copied, placed.copied_bytes
    report.changed = bool(placed.linked or placed.copied or placed.index_changed)
    store.index.touch_image(image.ref)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _layer_json(outcome: LayerOutcome) -> dict[str, Any]:
    return {"digest": str(outcome.descriptor.digest), "media_type": outcome.descriptor.media_type,
            "size": outcome.descriptor.size, "transcoded": outcome.transcoded, "reused": outcome.reused}


def _tag_of(ref: str) -> str | None:
    """The RepoTag a tarball carries for a cached ref (none for a digest-only ref)."""
    parsed = ImageRef.parse(ref)
    return f"{parsed.name}:{parsed.tag}" if parsed.tag else None


@contextlib.contextmanager
def output_stream(path: str) -> Iterator[BinaryIO]:
    """stdout for "-", else a temporary file renamed over ``path`` once complete."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with replacing(Path(path).absolute()) as out:
        yield out
