"""dpkg: ``var/lib/dpkg/status`` (one database file, rewritten whole) and distroless
``var/lib/dpkg/status.d/<name>`` (one file per package), plus ``usr/share/doc/<name>/copyright``
whose licences are joined to the packages after the merge."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from cache.sbom.catalogers.base import Json, SizeCapped, StreamedDatabase, has_suffix, stanzas, text_of

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d"


def _installed(stanza: dict[str, str]) -> bool:
    # "install ok installed", "hold ok installed"; not "deinstall ok config-files" (dpkg -l "rc")
    status = stanza.get("Status", "install ok installed").split()
    return len(status) == 3 and status[2] == "installed"


class DpkgCataloger(StreamedDatabase):
    """A real status file is 1 to 10 MB (a few thousand packages): it streams, so a bigger one is
    read too, up to StreamedDatabase's bounds, instead of being dropped whole."""

    name = "dpkg"
    package_type = "deb"

    def wants(self, path: str, mode: int, size: int) -> bool:
        if has_suffix(path, STATUS):
            return True
        parent, base = posixpath.split(path)
        return has_suffix(parent, STATUS_D) and not base.endswith(".md5sums") and not base.startswith(".")

    def parse_text(self, text: str) -> list[dict[str, str]]:
        packages = []
        for stanza in stanzas(text):
            if "Package" not in stanza or not _installed(stanza):
                continue
            source, _, source_version = stanza.get("Source", "").partition(" ")
            packages.append({
                "name": stanza["Package"],
                "version": stanza.get("Version", ""),
                "arch": stanza.get("Architecture", ""),
                "source": source,
                "source_version": source_version.strip("()"),
                "maintainer": stanza.get("Maintainer", ""),
            })
        return packages


_LICENSE_LINE = re.compile(r"License:[ \t]*(\S[^\n]*)")  # a literal start: found fast, line start checked after
_COMMON_LICENSES = re.compile(r"/usr/share/common-licenses/([A-Za-z0-9][A-Za-z0-9.+_-]*[A-Za-z0-9+])")
_SPLIT = re.compile(r"\s+(?:or|and)\s+|,\s*", re.IGNORECASE)


def licences_of_copyright(text: str) -> list[str]:
    """DEP-5 ``License:`` values (split on or/and), then common-licenses references, as syft reads them."""
    found: list[str] = []
    for match in _LICENSE_LINE.finditer(text):
        if match.start() and text[match.start() - 1] != "\n":
            continue
        for part in _SPLIT.split(match.group(1).strip()):
            part = part.strip(" ,;()")
            if part and part not in found and len(part) < 80:
                found.append(part)
    for match in _COMMON_LICENSES.finditer(text):
        name = match.group(1).rstrip(".")
        if name not in found:
            found.append(name)
    return found


class CopyrightCataloger(SizeCapped):
    """Facts only: licences per package name, joined to dpkg packages after the merge."""

    name = "dpkg-copyright"
    package_type = ""
    max_bytes = 8 << 20

    def wants(self, path: str, mode: int, size: int) -> bool:
        parts = path.split("/")
        return len(parts) == 5 and parts[:3] == ["usr", "share", "doc"] and parts[4] == "copyright"

    def parse(self, path: str, data: bytes) -> Json:
        return {"licenses": licences_of_copyright(text_of(data))}


def copyright_path(package: dict[str, Any]) -> str:
    return f"usr/share/doc/{package['name']}/copyright"
