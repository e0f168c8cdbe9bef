"""Java archives: ``META-INF/maven/**/pom.properties`` and ``META-INF/MANIFEST.MF``, nested jars too.

A zip's directory sits at its end, so an archive is read into memory, up to a cap; nested
archives are opened from memory (never written out). A jar is the easiest place to hide a zip
bomb, so what one costs is bounded before it is spent: the central directory's size (counted
before zipfile parses it), each entry's declared size, the bytes inflated for one file of the
layer at every depth together, the nesting depth, and the compression methods. Entries whose
bytes overlap another entry's (David Fifield's "better zip bomb": many directory records, one
kernel) are never read. Whatever is skipped is counted in the record's warnings; the packages
that were read are still reported.
"""

from __future__ import annotations

import io
import itertools
import posixpath
import re
import struct
import zipfile
import zlib

from cache.sbom.catalogers.base import Found, Json, Reader, over_cap, text_of

EXTENSIONS = (".jar", ".war", ".ear", ".par", ".sar", ".nar", ".kar", ".jpi", ".hpi", ".rar")
MAX_ARCHIVE = 128 << 20  # the file in the layer, read whole
MAX_NESTED = 64 << 20  # one nested archive, inflated into memory (a fat jar's libraries are a few MB)
MAX_MEMBER = 1 << 20  # a pom.properties or a manifest (real ones are under 1 KiB)
MAX_INFLATED = 256 << 20  # everything inflated for one file in the layer, nested archives included
MAX_ENTRIES = 200_000  # directory records of one archive: the largest real jars hold about 100,000
MAX_DEPTH = 3
_READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what jar tools write; bzip2 and lzma are slower to inflate
_CENTRAL = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s22xHH")  # signature, then the name and extra field lengths
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError)
_NAME_VERSION = re.compile(r"^(?P<name>.+?)-(?P<version>\d[\w.+~-]*)$")


class _Reader:
    """One file of the layer with the archives nested in it: the inflation budget they share, and
    what was skipped (by reason: a count and the first place)."""

    def __init__(self) -> None:
        self.left = MAX_INFLATED
        self.skipped: dict[str, tuple[int, str]] = {}

    def skip(self, reason: str, where: str) -> None:
        count, first = self.skipped.get(reason, (0, where))
        self.skipped[reason] = (count + 1, first)

    def warnings(self) -> list[str]:
        return [f"{count} skipped: {reason} (first: {first})" for reason, (count, first) in self.skipped.items()]

    def take(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where: str) -> bytes | None:
        """The entry's bytes; None (and noted) when it is over a bound or unreadable."""
        refusal = self._refusal(info, cap)
        if refusal:
            self.skip(refusal, where)
            return None
        try:
            with archive.open(info) as member:
                data = member.read(info.file_size)  # zipfile never inflates past the size it declares
        except _ZIP_ERRORS as error:
            self.skip(f"unreadable entry ({type(error).__name__})", where)
            return None
        self.left -= len(data)
        return data

    def _refusal(self, info: zipfile.ZipInfo, cap: int) -> str:
        if info.compress_type not in _READABLE:
            return f"entry compressed with method {info.compress_type}, which jars do not use"
        if info.flag_bits & 0x1:
            return "encrypted entry"
        if info.file_size > cap:
            return f"entry over the {cap} byte cap for one entry"
        if info.file_size > self.left:
            return f"entry over the {MAX_INFLATED} bytes one file of the layer may inflate in all"
        return ""


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


def _where(location: str, name: str) -> str:
    return f"{location}:{name}" if location else name


def _end(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where the entry's bytes end: its local header, name, extra field and compressed data."""
    try:
        signature, name, extra = _LOCAL.unpack_from(data, info.header_offset)
    except struct.error:
        return info.header_offset + _LOCAL.size
    if signature != b"PK\x03\x04":
        name = extra = 0
    return int(info.header_offset + _LOCAL.size + name + extra + info.compress_size)


def _sound(data: bytes, infos: list[zipfile.ZipInfo], location: str, reader: _Reader) -> list[zipfile.ZipInfo]:
    """The entries whose bytes overlap no other entry's. A real jar has none that do; a zip bomb
    lists one compressed kernel many times. Sorted by offset, an entry that reaches past the next
    one's start is dropped with that next one, so the entries kept never share a byte."""
    spans = sorted((info.header_offset, _end(data, info), number) for number, info in enumerate(infos))
    overlapping: set[int] = set()
    for (_, end, this), (start, _, after) in itertools.pairwise(spans):
        if end > start:
            overlapping.update((this, after))
    for number in sorted(overlapping):
        reader.skip("entries whose bytes overlap another entry's (a zip bomb's trick)",
                    _where(location, infos[number].filename))
    return [info for number, info in enumerate(infos) if number not in overlapping]


def _archive_packages(data: bytes, location: str, stem: str, depth: int, reader: _Reader) -> list[dict[str, str]]:
    if data.count(_CENTRAL) > MAX_ENTRIES:  # before zipfile builds an object per record
        reader.skip(f"archive with more than {MAX_ENTRIES} entries", location or "the archive itself")
        return []
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS:
        return []
    with archive:
        infos = _sound(data, archive.infolist(), location, reader)
        found = _poms(archive, infos, location, reader) or _from_manifest(archive, infos, location, stem, reader)
        found.extend(_nested(archive, infos, location, depth, reader))
    return found


def _poms(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], location: str,
          reader: _Reader) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for info in infos:
        if not (info.filename.startswith("META-INF/maven/") and info.filename.endswith("/pom.properties")):
            continue
        data = reader.take(archive, info, MAX_MEMBER, _where(location, info.filename))
        props = _properties(text_of(data or b""))
        if props.get("artifactId") and props.get("version"):
            found.append({"name": props["artifactId"], "version": props["version"],
                          "group_id": props.get("groupId", ""), "artifact_id": props["artifactId"],
                          "location": location})
    return found


def _nested(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], location: str, depth: int,
            reader: _Reader) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for info in infos:
        if not info.filename.lower().endswith(EXTENSIONS) or info.file_size == 0:
            continue
        where = _where(location, info.filename)
        if depth >= MAX_DEPTH:
            reader.skip(f"archive nested deeper than {MAX_DEPTH}", where)
            continue
        inner = reader.take(archive, info, MAX_NESTED, where)
        if inner is not None:
            found.extend(_archive_packages(inner, where, _stem(info.filename), depth + 1, reader))
    return found


def _stem(path: str) -> str:
    return posixpath.basename(path).rsplit(".", 1)[0]


def _from_manifest(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], location: str, stem: str,
                   reader: _Reader) -> list[dict[str, str]]:
    manifest = next((i for i in reversed(infos) if i.filename == "META-INF/MANIFEST.MF"), None)  # zipfile's pick
    data = reader.take(archive, manifest, MAX_MEMBER, _where(location, manifest.filename)) if manifest else None
    fields = _manifest(text_of(data or b""))
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

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        if size > MAX_ARCHIVE:
            return over_cap(size, MAX_ARCHIVE)
        reader = _Reader()
        packages = _archive_packages(stream.read(size), "", _stem(path), 0, reader)
        for package in packages:  # the outer archive is the file itself; nested ones keep "inner.jar:..."
            if not package["location"]:
                package.pop("location")
        return {"packages": packages, **({"warnings": reader.warnings()} if reader.skipped else {})}

    def packages(self, path: str, record: Json) -> list[Found]:
        return [Found(p["name"], p["version"], dict(p)) for p in record.get("packages", [])]
