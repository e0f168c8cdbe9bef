"""SPDX 2.3 JSON: the image as the described package, CONTAINS each found package.

Licences that are not certainly an SPDX identifier become ``LicenseRef-`` entries whose text is
what the package said, so the document stays valid and nothing is guessed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cache.sbom.formats.common import TOOL, created, document_uuid, package_id, safe_id, tool_version
from cache.sbom.formats.licences import spdx_id
from cache.sbom.generate import ImageSbom

NOASSERTION = "NOASSERTION"


class _LicenceRefs:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def id_for(self, found: str) -> str:
        known = spdx_id(found)
        if known:
            return known
        ref = f"LicenseRef-{safe_id(found)}"
        if self.texts.get(ref, found) != found:
            ref += "-" + hashlib.sha256(found.encode()).hexdigest()[:8]
        self.texts[ref] = found
        return ref

    def expression(self, found: list[str]) -> str:
        ids = list(dict.fromkeys(self.id_for(text) for text in found))
        if not ids:
            return NOASSERTION
        return " AND ".join(f"({i})" if " " in i else i for i in ids)


def _creation_info(sbom: ImageSbom) -> dict[str, Any]:
    info: dict[str, Any] = {"created": created(), "creators": [f"Tool: {TOOL}-{tool_version()}"],
                            "licenseListVersion": "3.24"}
    if sbom.warnings:  # the creator comment: where SPDX 2.3 lets the tool say how the document was made
        info["comment"] = "\n".join([f"{TOOL} warnings (this document may be incomplete):", *sbom.warnings])
    return info


def spdx_document(sbom: ImageSbom) -> dict[str, Any]:
    refs = _LicenceRefs()
    image_id = f"SPDXRef-DocumentRoot-Image-{safe_id(sbom.ref)}"
    packages: list[dict[str, Any]] = [{
        "name": sbom.ref,
        "SPDXID": image_id,
        "versionInfo": sbom.digest,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": sbom.digest.split(":", 1)[-1]}],
    }]
    relationships: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id},
    ]
    for package in sbom.packages:
        spdx = f"SPDXRef-Package-{safe_id(package.type)}-{safe_id(package.name)}-{package_id(package)}"
        packages.append({
            "name": package.name,
            "SPDXID": spdx,
            "versionInfo": package.version,
            "supplier": NOASSERTION,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": refs.expression(package.licenses),
            "copyrightText": NOASSERTION,
            "sourceInfo": f"acquired package info from {package.found_by}: /{', /'.join(package.locations)}",
            "comment": f"layerID: {package.layer}",
            "externalRefs": [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": package.purl},
            ],
        })
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": spdx})
    document: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": sbom.ref,
        "documentNamespace": f"https://layerhoard.invalid/spdx/{safe_id(sbom.ref)}-{document_uuid(sbom, 'spdx')}",
        "creationInfo": _creation_info(sbom),
        "packages": packages,
        "relationships": relationships,
    }
    if refs.texts:
        document["hasExtractedLicensingInfos"] = [
            {"licenseId": ref, "extractedText": text, "name": text} for ref, text in sorted(refs.texts.items())
        ]
    return document
