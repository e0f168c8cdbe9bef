"""The image-wide steps, run on every merge and never cached: distro, purls, dpkg licences and
layer attribution.

Layer attribution rule: a package belongs to the layer that introduced the version the final
image shows. Walking down the lineage of the visible file that lists it (a package database or
a package's own metadata file), that is the lowest copy from which every copy above, up to the
visible one, still lists the same name, version and architecture. So a package installed in the
base and untouched by later ``apt-get install`` runs (which rewrite ``status`` whole) stays with
the base layer; an upgrade moves it to the upgrading layer; a metadata file deleted and written
again starts a new lineage.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from cache.sbom.catalogers import BY_NAME
from cache.sbom.catalogers.base import Found
from cache.sbom.catalogers.osrelease import PATHS as OS_RELEASE_PATHS
from cache.sbom.merge import Copy, MergedView
from cache.sbom.model import Distro, Package
from cache.sbom.purl import purl, pypi_name
from cache.sbom.tarpaths import resolve

RPM_NAMESPACES = {"rhel": "redhat"}


def find_distro(view: MergedView) -> Distro | None:
    """os-release wherever it sits: etc/os-release (often a symlink into usr/lib), else usr/lib/os-release."""
    for wanted in OS_RELEASE_PATHS:
        path = resolve(wanted, view.symlinks)
        copy = view.top(path)
        if copy is None or copy.evidence.cataloger != "os-release":
            continue
        fields = copy.evidence.record.get("fields", {})
        if fields.get("ID"):
            return Distro(fields["ID"], fields.get("VERSION_ID"), fields.get("NAME"), fields.get("PRETTY_NAME"), path)
    return None


def build_packages(view: MergedView, diff_ids: Sequence[str]) -> tuple[Distro | None, list[Package]]:
    distro = find_distro(view)
    packages: list[Package] = []
    for path, lineage in sorted(view.evidence.items()):
        cataloger = BY_NAME.get(lineage[-1].evidence.cataloger)
        if cataloger is None or not cataloger.package_type:
            continue
        record = lineage[-1].evidence.record
        if not isinstance(record, dict) or "error" in record:
            continue
        for found in cataloger.packages(path, record):
            layer = diff_ids[_introduced(found, path, lineage)]
            packages.append(_package(cataloger.name, cataloger.package_type, found, path, layer, distro, view))
    packages.sort(key=lambda p: (p.type, p.name, p.version, p.locations))
    return distro, packages


def _identity(found: Found) -> tuple[str, str, str]:
    return (found.name, found.version, str(found.fields.get("arch", "")))


def _introduced(found: Found, path: str, lineage: list[Copy]) -> int:
    wanted = _identity(found)
    layer = lineage[-1].layer
    for copy in reversed(lineage[:-1]):
        cataloger = BY_NAME.get(copy.evidence.cataloger)
        record = copy.evidence.record
        if cataloger is None or not isinstance(record, dict) or "error" in record:
            break
        if wanted not in {_identity(f) for f in cataloger.packages(path, record)}:
            break
        layer = copy.layer
    return layer


def _package(cataloger: str, kind: str, found: Found, path: str, layer: str, distro: Distro | None,
             view: MergedView) -> Package:
    fields: dict[str, Any] = dict(found.fields)
    licenses = [str(x) for x in fields.pop("licenses", []) if x]
    if kind == "deb":
        licenses = _dpkg_licences(found.name, view)
        source = fields.get("source") or None
        upstream = None
        if source and source != found.name:
            upstream = f"{source}@{fields['source_version']}" if fields.get("source_version") else source
        namespace = distro.id if distro else "debian"
        url = purl("deb", found.name, found.version, namespace,
                   {"arch": fields.get("arch"), "upstream": upstream, "distro": distro.qualifier() if distro else None})
    elif kind == "apk":
        if fields.get("license"):
            licenses = [fields["license"]]
        namespace = distro.id if distro else "alpine"
        origin = fields.get("origin")
        url = purl("apk", found.name, found.version, namespace,
                   {"arch": fields.get("arch"), "upstream": origin if origin != found.name else None,
                    "distro": distro.qualifier() if distro else None})
    elif kind == "rpm":
        licenses = [fields["license"]] if fields.get("license") else []
        namespace = RPM_NAMESPACES.get(distro.id, distro.id) if distro else ""
        url = purl("rpm", found.name, found.version, namespace,
                   {"arch": fields.get("arch"), "epoch": fields.get("epoch"),
                    "upstream": fields.get("sourcerpm"), "distro": distro.qualifier() if distro else None})
    elif kind == "python":
        url = purl("pypi", pypi_name(found.name), found.version)
    elif kind == "npm":
        scope, _, bare = found.name.rpartition("/")
        url = purl("npm", bare, found.version, scope or None)
    elif kind == "go-module":
        namespace, _, bare = found.name.rpartition("/")
        url = purl("golang", bare, found.version, namespace or None)
    elif kind == "java-archive":
        group = fields.get("group_id") or None
        url = purl("maven", fields.get("artifact_id") or found.name, found.version, group)
    else:  # pragma: no cover - every cataloger's type is listed above
        url = purl("generic", found.name, found.version)
    location = fields.pop("location", None)
    locations = [path if not location else f"{path}:{location}"]
    return Package(found.name, found.version, kind, cataloger, url, locations, layer, licenses,
                   {k: v for k, v in fields.items() if k not in ("name", "version") and v not in ("", None)})


def _dpkg_licences(name: str, view: MergedView) -> list[str]:
    """Licences only from usr/share/doc/<name>/copyright, following a symlinked doc folder."""
    wanted = posixpath.join(resolve(f"usr/share/doc/{name}", view.symlinks), "copyright")
    copy = view.top(wanted)
    if copy is None or copy.evidence.cataloger != "dpkg-copyright":
        return []
    return list(copy.evidence.record.get("licenses", []))
