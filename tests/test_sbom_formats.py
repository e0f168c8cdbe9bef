"""Every document passes the independent validators: spdx-tools for SPDX 2.3, cyclonedx-python-lib's
strict JSON schema for CycloneDX 1.6; every purl parses; references inside a document resolve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from cache.sbom import ImageSbom, render
from cache.store.blobstore import BlobStore
from tests.test_sbom_support import files_from_host, sbom_of, tar_with

STATUS = (b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\n"
          b"Version: 2.36-9+deb12u4\n\n"
          b"Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n\n")


@pytest.fixture
def sbom(store: BlobStore, tmp_path: Path) -> ImageSbom:
    """An image with every kind of package: real copyright texts and jars from this machine."""
    jars = files_from_host(sorted(Path("/usr/share/java").glob("commons-*.jar")))
    layers = [
        tar_with({"var/lib/dpkg/status": STATUS, "usr/lib/os-release": b'ID=debian\nVERSION_ID="12"\n',
                  **files_from_host([Path("/usr/share/doc/libc6/copyright"), Path("/usr/share/doc/tzdata/copyright")])},
                 symlinks={"etc/os-release": "../usr/lib/os-release"}),
        tar_with({"usr/lib/python3/dist-packages/Typing_Extensions-4.9.0.dist-info/METADATA":
                  b"Metadata-Version: 2.1\nName: typing_extensions\nVersion: 4.9.0\n"
                  b"Classifier: License :: OSI Approved :: Python Software Foundation License\n",
                  "app/node_modules/@types/node/package.json":
                  b'{"name": "@types/node", "version": "20.1.0", "license": "MIT"}',
                  **jars}),
    ]
    return sbom_of(store, tmp_path / "layout", layers, name="registry.test:5000/team/app:1.0")


def test_spdx_passes_spdx_tools_validation(sbom: ImageSbom, tmp_path: Path) -> None:
    path = tmp_path / "sbom.spdx.json"
    path.write_text(render(sbom, "spdx-json"))
    document = parse_file(str(path))
    messages = validate_full_spdx_document(document, "SPDX-2.3")
    assert messages == [], [m.validation_message for m in messages]
    data = json.loads(path.read_text())
    assert len(data["packages"]) == len(sbom.packages) + 1
    ids = {p["SPDXID"] for p in data["packages"]}
    assert len(ids) == len(data["packages"])
    for relationship in data["relationships"]:
        assert relationship["relatedSpdxElement"] in ids
    for package in data["packages"][1:]:
        assert package["comment"].startswith("layerID: sha256:")
        PackageURL.from_string(package["externalRefs"][0]["referenceLocator"])
    libc6 = next(p for p in data["packages"] if p["name"] == "libc6")
    assert "LicenseRef-" in libc6["licenseDeclared"] or "LGPL" in libc6["licenseDeclared"]


def test_cyclonedx_passes_strict_schema_validation(sbom: ImageSbom) -> None:
    text = render(sbom, "cyclonedx-json")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    data = json.loads(text)
    refs = [c["bom-ref"] for c in data["components"]] + [data["metadata"]["component"]["bom-ref"]]
    assert len(refs) == len(set(refs))  # the schema does not check this
    for dependency in data["dependencies"]:
        assert dependency["ref"] in refs and set(dependency["dependsOn"]) <= set(refs)
    kinds = {c["type"] for c in data["components"]}
    assert kinds == {"operating-system", "library"}
    for component in data["components"]:
        if "purl" in component:
            purl = PackageURL.from_string(component["purl"])
            assert purl.to_string() == component["purl"]  # canonical: what a matcher compares


def test_every_kind_is_present_with_a_canonical_purl(sbom: ImageSbom) -> None:
    kinds = {p.type for p in sbom.packages}
    assert {"deb", "python", "npm"} <= kinds
    if list(Path("/usr/share/java").glob("commons-*.jar")):
        assert "java-archive" in kinds
    for package in sbom.packages:
        assert PackageURL.from_string(package.purl).to_string() == package.purl
    libc6 = next(p for p in sbom.packages if p.name == "libc6")
    assert libc6.purl == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
    python = next(p for p in sbom.packages if p.type == "python")
    assert python.purl == "pkg:pypi/typing-extensions@4.9.0"


def test_native_json_keeps_layers_and_locations(sbom: ImageSbom) -> None:
    data = json.loads(render(sbom, "json"))
    assert data["schema"] == "layerhoard-sbom/1"
    assert [layer["scanned"] for layer in data["layers"]] == [True, True]
    assert data["distro"]["id"] == "debian"
    layer_ids = {layer["diff_id"] for layer in data["layers"]}
    for artifact in data["artifacts"]:
        assert artifact["layer"] in layer_ids and artifact["locations"]
