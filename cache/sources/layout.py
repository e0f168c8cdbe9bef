"""Importing from an OCI image layout folder (``oci:DIR[:REF]``), checking every blob.

The image's name in the cache: the layout's ref name when it is a full image reference (has a
registry, like ``docker.io/library/alpine:3.20``); otherwise ``localhost/<folder name>:<ref>``,
podman's convention for images that came from no registry. ``name`` overrides both.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cache.errors import BlobNotFound, ImageNotFound, InvalidManifest, InvalidReference, LayerhoardError, SourceError
from cache.formats.index_json import REF_NAME, read_entries
from cache.ingest.blobs import BlobPuller, Fetch
from cache.ingest.commit import Arrival, commit
from cache.ingest.pull import ReferrerOptions
from cache.ingest.referrers import fetch_referrers
from cache.ingest.report import PullReport
from cache.model.digest import sha256_of
from cache.model.manifests import MAX_MANIFEST_BYTES, Descriptor, Index, Manifest, Platform, parse_manifest_or_index
from cache.model.refs import ImageRef, LayoutSource, Source
from cache.progress import ProgressFactory, no_progress
from cache.store.blobstore import BlobStore

if TYPE_CHECKING:
    from cache.ingest.pull import PullOptions

READ_CHUNK = 1 << 20
_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")  # what export oci: names cosign's manifests


def parse(body: str) -> LayoutSource:
    path, _, ref = body.partition(":")
    if not path:
        raise InvalidReference("oci: needs a folder, like oci:./layout:app")
    return LayoutSource(path, ref or None)


def pull(store: BlobStore, source: Source, options: PullOptions) -> PullReport:
    assert isinstance(source, LayoutSource)
    return pull_from_layout(store, source, platform=options.platform, name=options.name, jobs=options.jobs,
                            progress=options.progress, referrers=options.referrers)


def read_index(root: Path) -> list[Descriptor]:
    if not (root / "oci-layout").is_file():
        raise SourceError(f"{root} is not an OCI image layout (no oci-layout file)")
    try:
        entries = read_entries(root / "index.json", f"{root}/index.json")
    except FileNotFoundError:
        raise SourceError(f"{root} is not an OCI image layout (no index.json)") from None
    except LayerhoardError as error:
        raise SourceError(str(error)) from None
    return [Descriptor.from_json(entry, f"{root}/index.json") for entry in entries]


def _choose_entry(root: Path, entries: list[Descriptor], ref: str | None) -> Descriptor:
    if ref is None:
        named = [entry for entry in entries if named_image(entry)]
        entries = named if len(named) == 1 else entries  # beside it: its referrers (unnamed), cosign's tags
        if len(entries) != 1:
            names = ", ".join(e.annotations.get(REF_NAME, str(e.digest)) for e in entries) or "none"
            raise ImageNotFound(f"{root} holds {len(entries)} images ({names}); name one as oci:{root}:REF")
        return entries[0]
    for entry in entries:
        if entry.annotations.get(REF_NAME) == ref or str(entry.digest) == ref:
            return entry
    raise ImageNotFound(f"no image named {ref!r} in {root}")


def named_image(entry: Descriptor) -> bool:
    """An entry named as an image: neither a referrer (unnamed) nor a cosign tag."""
    name = entry.annotations.get(REF_NAME)
    return bool(name) and _COSIGN_TAG.fullmatch(name or "") is None


def cache_name(root: Path, ref: str | None) -> str:
    if ref and "/" in ref:
        try:
            return str(ImageRef.parse(ref))
        except InvalidReference:
            pass
    folder = "".join(c if c.isalnum() or c in "._-" else "-" for c in root.resolve().name.lower()).strip(".-_")
    tag = ref if ref and ":" not in ref and "@" not in ref else "latest"
    return str(ImageRef.parse(f"localhost/{folder or 'layout'}:{tag}"))


def _blob_path(root: Path, descriptor: Descriptor) -> Path:
    return root / "blobs" / "sha256" / descriptor.digest.hex  # hex is checked: no path tricks


def fetcher(root: Path) -> Fetch:
    def fetch(descriptor: Descriptor, offset: int, on_chunk: Callable[[bytes], None], _restart: object) -> int:
        try:
            handle = open(_blob_path(root, descriptor), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise BlobNotFound(f"{root}: blob {descriptor.digest} is missing from the layout") from None
        with handle:
            handle.seek(offset)
            received = 0
            while chunk := handle.read(READ_CHUNK):
                on_chunk(chunk)
                received += len(chunk)
            return received

    return fetch


def pull_from_layout(
    store: BlobStore,
    source: LayoutSource,
    *,
    platform: Platform | None = None,
    name: str | None = None,
    jobs: int = 2,
    progress: ProgressFactory = no_progress,
    referrers: ReferrerOptions | None = None,
) -> PullReport:
    started = time.monotonic()
    root = Path(source.path)
    entry = _choose_entry(root, read_index(root), source.ref)
    top = read_manifest(root, entry)
    chosen: Platform | None = None
    if isinstance(top, Index):  # the name keeps the index, with the platform pulled stored under it
        descriptor = top.choose(platform or Platform.host())
        manifest = read_manifest(root, descriptor)
        if not isinstance(manifest, Manifest):
            raise InvalidManifest(f"{root}: nested indexes are not supported")
        chosen = descriptor.platform
    else:
        manifest = top
    puller = BlobPuller(store, fetcher(root), str(source), jobs=jobs, progress=progress)
    pulled = puller.pull_manifest(manifest)
    image_name = name or cache_name(root, source.ref or entry.annotations.get(REF_NAME))
    # bytes_fetched stays 0: a layout on disk is not a registry or the daemon
    arrival = Arrival(str(source), top, [manifest], chosen=manifest, platform=chosen or pulled.config.platform,
                      layers=pulled.layers)
    subjects = (referrers or ReferrerOptions()).subjects(store, [top, manifest])
    if subjects:  # what export oci: wrote beside the image (cache/sources/layout_referrers.py); before the name
        from cache.sources.layout_referrers import LayoutReferrers

        arrival.referrers = fetch_referrers(store, LayoutReferrers(root), subjects, str(source), referrers)
    return commit(store, arrival, [image_name], started)


def read_manifest(root: Path, descriptor: Descriptor) -> Manifest | Index:
    path = _blob_path(root, descriptor)
    try:
        size = os.stat(path).st_size
        if size != descriptor.size or size > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"{root}: manifest {descriptor.digest} is {size} bytes, index says {descriptor.size}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BlobNotFound(f"{root}: manifest {descriptor.digest} is missing from the layout") from None
    if sha256_of(raw) != descriptor.digest:
        raise InvalidManifest(f"{root}: manifest {descriptor.digest} does not match its content")
    return parse_manifest_or_index(raw, descriptor.media_type, f"manifest {descriptor.digest}")
