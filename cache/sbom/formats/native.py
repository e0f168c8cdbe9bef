"""layerhoard's own JSON: everything the scan knows, including how each layer was obtained."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cache.sbom.formats.common import TOOL, created, package_id, tool_version
from cache.sbom.generate import ImageSbom

SCHEMA = "layerhoard-sbom/1"


def native_document(sbom: ImageSbom) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "descriptor": {"name": TOOL, "version": tool_version(), "scanner_version": sbom.scanner_version,
                       "created": created()},
        "source": {"ref": sbom.ref, "digest": sbom.digest, "platform": sbom.platform},
        "distro": asdict(sbom.distro) if sbom.distro else None,
        "layers": [asdict(layer) for layer in sbom.layers],
        "artifacts": [{"id": package_id(p), **asdict(p)} for p in sbom.packages],
        "warnings": sbom.warnings,  # what the scan dropped: the document may be incomplete
    }
