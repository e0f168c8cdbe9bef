"""An image's SBOM: each layer's record from the cache, or scanned from its blob once and kept;
then the merge and the image-wide steps, every time (they take milliseconds)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cache.errors import BlobNotFound, InvalidManifest, NotScanned, evicted_while_read
from cache.model.manifests import compression_of
from cache.sbom.catalogers import SCANNER_VERSION
from cache.sbom.merge import merge
from cache.sbom.model import Distro, LayerRecord, Package
from cache.sbom.packages import build_packages
from cache.sbom.records import SbomRecords
from cache.sbom.scan import scan_layer
from cache.sbom.warnings import image_warnings
from cache.store.images import CachedImage


@dataclass
class LayerScan:
    diff_id: str
    digest: str
    scanned: bool  # False: served from the per-layer cache, the blob was not opened
    seconds: float
    uncompressed_bytes: int


@dataclass
class ImageSbom:
    ref: str
    digest: str
    platform: str | None
    distro: Distro | None
    packages: list[Package]
    layers: list[LayerScan] = field(default_factory=list)
    seconds: float = 0.0
    scanner_version: str = SCANNER_VERSION
    warnings: list[str] = field(default_factory=list)  # what the scan dropped (cache/sbom/warnings.py)

    @property
    def layers_scanned(self) -> int:
        return sum(1 for layer in self.layers if layer.scanned)

    @property
    def layers_cached(self) -> int:
        return sum(1 for layer in self.layers if not layer.scanned)


def layer_record(image: CachedImage, index: int, records: SbomRecords,
                 scan: bool = True) -> tuple[LayerRecord, bool]:
    """The record of layer ``index``: (record, True when it had to be scanned now). With ``scan``
    False a layer without a record raises NotScanned instead (its blob is never opened)."""
    diff_id = str(image.config.diff_ids[index])
    cached = records.get(diff_id)
    if cached is not None:
        return cached, False
    if not scan:
        raise NotScanned(f"{image.ref}: layer {diff_id} has no scan record; `layerhoard sbom` scans it")
    descriptor = image.layers[index]
    try:
        raw = image.open_layer(descriptor)
    except BlobNotFound as error:  # a prune evicted the image since it was loaded
        raise evicted_while_read(image.ref, error) from None
    with raw:
        record = scan_layer(raw, compression_of(descriptor.media_type), diff_id)
    records.put(record)
    return record, True


def image_sbom(image: CachedImage, scan: bool = True) -> ImageSbom:
    """The image's SBOM; with ``scan`` False from the scan records alone (NotScanned if one is missing)."""
    started = time.monotonic()
    image.require_image("an SBOM")
    if len(image.config.diff_ids) != len(image.layers):
        raise InvalidManifest(f"{image.ref}: config lists {len(image.config.diff_ids)} diff_ids "
                              f"for {len(image.layers)} layers")
    records = SbomRecords(image.store.index)
    layer_records: list[LayerRecord] = []
    scans: list[LayerScan] = []
    for index, descriptor in enumerate(image.layers):
        layer_started = time.monotonic()
        record, scanned = layer_record(image, index, records, scan)
        layer_records.append(record)
        scans.append(LayerScan(record.diff_id, str(descriptor.digest), scanned,
                               time.monotonic() - layer_started, record.uncompressed_bytes))
    diff_ids = [str(d) for d in image.config.diff_ids]
    view = merge(layer_records)
    distro, packages = build_packages(view, diff_ids)
    platform = image.config.platform
    return ImageSbom(image.ref, str(image.digest), str(platform) if platform else None, distro, packages,
                     scans, time.monotonic() - started, warnings=image_warnings(view, layer_records))
