"""Java archives: ``META-INF/maven/**/pom.properties`` and ``META-INF/MANIFEST.MF``, nested jars too.

A zip's directory sits at its end, so an archive is read into memory, up to a cap; nested
archives are opened from memory (never written out), to a fixed depth and size.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from typing import IO

from cache.sbom.catalogers.base import Found, Json, text_of

EXTENSIONS = (".jar", ".war", ".ear", ".par", ".sar", ".nar", ".kar", ".jpi", ".hpi", ".rar")
MAX_ARCHIVE = 128 << 20
MAX_MEMBER = 1 << 20  # a pom.properties or a manifest
MAX_DEPTH = 3
_NAME_VERSION = re.compile(r"^(?P<name>.+?)-(?P<version>\d[\w.+~-]*)$")


def _manifest(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if line.startswith(" ") and last:
            fields[last] += line[1:]
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _properties(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    with archive.open(info) as member:
        return text_of(member.read(MAX_MEMBER))


def _archive_packages(data: bytes, location: str, stem: str, depth: int) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return found
    with archive:
        for info in infos:
            if info.filename.startswith("META-INF/maven/") and info.filename.endswith("/pom.properties"):
                props = _properties(_read(archive, info))
                if props.get("artifactId") and props.get("version"):
                    found.append({"name": props["artifactId"], "version": props["version"],
                                  "group_id": props.get("groupId", ""), "artifact_id": props["artifactId"],
                                  "location": location})
        if not found:
            found.extend(_from_manifest(archive, location, stem))
        if depth < MAX_DEPTH:
            for info in infos:
                if info.filename.lower().endswith(EXTENSIONS) and 0 < info.file_size <= MAX_ARCHIVE:
                    with archive.open(info) as member:
                        inner = member.read(MAX_ARCHIVE)
                    nested = f"{location}:{info.filename}" if location else info.filename
                    found.extend(_archive_packages(inner, nested, _stem(info.filename), depth + 1))
    return found


def _stem(path: str) -> str:
    return posixpath.basename(path).rsplit(".", 1)[0]


def _from_manifest(archive: zipfile.ZipFile, location: str, stem: str) -> list[dict[str, str]]:
    try:
        fields = _manifest(_read(archive, archive.getinfo("META-INF/MANIFEST.MF")))
    except KeyError:
        fields = {}
    by_name = _NAME_VERSION.match(stem)
    name = (fields.get("Implementation-Title") or fields.get("Bundle-SymbolicName", "").split(";")[0]
            or (by_name.group("name") if by_name else stem))
    version = (fields.get("Implementation-Version") or fields.get("Bundle-Version")
               or fields.get("Specification-Version") or (by_name.group("version") if by_name else ""))
    if not name or not version:
        return []
    return [{"name": name, "version": version, "group_id": "", "artifact_id": "", "location": location}]


class JavaArchiveCataloger:
    name = "java-archive"
    package_type = "java-archive"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path.lower().endswith(EXTENSIONS)

    def read(self, path: str, stream: IO[bytes], size: int) -> Json | None:
        if size > MAX_ARCHIVE:
            return {"error": f"not read: {size} bytes is over the {MAX_ARCHIVE} byte cap"}
        packages = _archive_packages(stream.read(size), "", _stem(path), 0)
        for package in packages:  # the outer archive is the file itself; nested ones keep "inner.jar:..."
            if not package["location"]:
                package.pop("location")
        return {"packages": packages}

    def packages(self, path: str, record: Json) -> list[Found]:
        return [Found(p["name"], p["version"], dict(p)) for p in record.get("packages", [])]
