"""Find the image an ``sbom`` request names: already cached, or pulled through the cache first."""

from __future__ import annotations

from cache.ingest.pull import PullOptions, pull
from cache.ingest.report import PullReport
from cache.model.refs import RegistrySource, parse_source
from cache.store.blobstore import BlobStore
from cache.store.images import CachedImage, load_image


def cached_ref(store: BlobStore, text: str) -> str | None:
    """The index.json name ``text`` means, when that image is stored: as written, or normalised
    (``alpine`` → ``docker.io/library/alpine:latest``). Only registry-style names are looked up;
    other transports always go through pull, which is cheap when their layers are cached."""
    if store.image_descriptor(text) is not None:
        return text
    try:
        source = parse_source(text)
    except Exception:
        return None
    if isinstance(source, RegistrySource) and store.image_descriptor(str(source.ref)) is not None:
        return str(source.ref)
    return None


def image_for(store: BlobStore, text: str, options: PullOptions | None = None,
              *, refresh: bool = False) -> tuple[CachedImage, PullReport | None]:
    """The stored image for ``text``; pulled first when it is not cached (or ``refresh`` asks)."""
    options = options or PullOptions()
    ref = None if refresh else cached_ref(store, text)
    report = None
    if ref is None:
        report = pull(store, text, options)
        ref = report.ref
    return load_image(store, ref, options.platform), report
