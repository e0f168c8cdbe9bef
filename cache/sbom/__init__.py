"""SBOMs of cached images, scanned once per layer and merged on request (docs/sbom.md).

    from cache.sbom import image_sbom, render
    sbom = image_sbom(load_image(store, "docker.io/library/debian:12"))
    print(render(sbom, "spdx-json"), sbom.layers_scanned, sbom.layers_cached)
"""

from __future__ import annotations

from cache.sbom.formats import FORMATS, render
from cache.sbom.generate import ImageSbom, LayerScan, image_sbom
from cache.sbom.records import SbomRecords

__all__ = ["FORMATS", "ImageSbom", "LayerScan", "SbomRecords", "image_sbom", "render"]
