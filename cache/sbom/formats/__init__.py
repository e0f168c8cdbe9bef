"""SBOM documents from an ImageSbom: SPDX 2.3 JSON, CycloneDX 1.6 JSON, layerhoard's own JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cache.errors import LayerhoardError
from cache.sbom.formats.cyclonedx import cyclonedx_document
from cache.sbom.formats.native import native_document
from cache.sbom.formats.spdx import spdx_document
from cache.sbom.generate import ImageSbom

FORMATS: dict[str, Callable[[ImageSbom], dict[str, Any]]] = {
    "spdx-json": spdx_document,
    "cyclonedx-json": cyclonedx_document,
    "json": native_document,
}


def render(sbom: ImageSbom, format_name: str) -> str:
    try:
        build = FORMATS[format_name]
    except KeyError:
        raise LayerhoardError(f"unknown SBOM format {format_name!r}: use one of {', '.join(FORMATS)}") from None
    return json.dumps(build(sbom), indent=2, ensure_ascii=False) + "\n"
