"""CycloneDX 1.6 JSON: the image as metadata.component (a container), each package a component
with its purl, licences, and where it was found (path and layer) as properties."""

from __future__ import annotations

from typing import Any

from cache.sbom.formats.common import TOOL, created, document_uuid, package_id, tool_version
from cache.sbom.formats.licences import spdx_id
from cache.sbom.generate import ImageSbom
from cache.sbom.model import Package


def _licences(package: Package) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for found in dict.fromkeys(package.licenses):
        known = spdx_id(found)
        out.append({"license": {"id": known} if known else {"name": found}})
    return out


def _component(package: Package) -> dict[str, Any]:
    properties = [{"name": f"{TOOL}:package:type", "value": package.type},
                  {"name": f"{TOOL}:package:foundBy", "value": package.found_by}]
    for number, path in enumerate(package.locations):
        properties.append({"name": f"{TOOL}:location:{number}:path", "value": "/" + path})
        properties.append({"name": f"{TOOL}:location:{number}:layerID", "value": package.layer})
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": f"{package.type}:{package_id(package)}",
        "name": package.name,
        "version": package.version,
        "purl": package.purl,
        "properties": properties,
    }
    licences = _licences(package)
    if licences:
        component["licenses"] = licences
    return component


def cyclonedx_document(sbom: ImageSbom) -> dict[str, Any]:
    image_ref = f"image:{sbom.digest}"
    components = [_component(p) for p in sbom.packages]
    if sbom.distro:
        components.insert(0, {
            "type": "operating-system",
            "bom-ref": f"os:{sbom.distro.id}-{sbom.distro.version_id or ''}",
            "name": sbom.distro.id,
            **({"version": sbom.distro.version_id} if sbom.distro.version_id else {}),
            **({"description": sbom.distro.pretty_name} if sbom.distro.pretty_name else {}),
        })
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{document_uuid(sbom, 'cyclonedx')}",
        "version": 1,
        "metadata": {
            "timestamp": created(),
            "tools": {"components": [{"type": "application", "name": TOOL, "version": tool_version()}]},
            "component": {"type": "container", "bom-ref": image_ref, "name": sbom.ref, "version": sbom.digest},
            **({"properties": [{"name": f"{TOOL}:warning:{number}", "value": warning}
                               for number, warning in enumerate(sbom.warnings)]} if sbom.warnings else {}),
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }
