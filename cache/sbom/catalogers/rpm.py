"""rpm: the SQLite rpmdb (``rpmdb.sqlite``: RHEL/Fedora 9+, openSUSE, Amazon Linux 2023).

The database is one file (top copy wins). It is opened from memory with sqlite3's deserialize,
never written out; each row's blob is an rpm header, parsed here: an index of (tag, type, offset,
count) entries over a data store. The older Berkeley DB and NDB formats are not read.
"""

from __future__ import annotations

import sqlite3
import struct

from cache.sbom.catalogers.base import Found, Json, Reader, has_suffix

PATHS = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite", "usr/share/rpm/rpmdb.sqlite")
MAX_DB = 512 << 20
TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1011: "vendor", 1014: "license",
        1022: "arch", 1044: "sourcerpm"}
INT32, STRING, STRING_ARRAY, I18NSTRING = 4, 6, 8, 9
_ENTRY = struct.Struct(">iIiI")


def parse_header(blob: bytes) -> dict[str, object]:
    """The tags we need from one header blob (no lead, no magic: as rpmdb stores them)."""
    if len(blob) < 8:
        raise ValueError("rpm header shorter than its counts")
    entries, data_length = struct.unpack_from(">II", blob, 0)
    store = 8 + entries * _ENTRY.size
    if entries > 100_000 or store + data_length > len(blob):
        raise ValueError("rpm header counts exceed the blob")
    data = blob[store:store + data_length]
    out: dict[str, object] = {}
    for number in range(entries):
        tag, kind, offset, count = _ENTRY.unpack_from(blob, 8 + number * _ENTRY.size)
        if tag not in TAGS or not 0 <= offset < len(data):
            continue
        if kind in (STRING, I18NSTRING, STRING_ARRAY):
            end = data.find(b"\0", offset)
            out[TAGS[tag]] = data[offset:end if end >= 0 else len(data)].decode("utf-8", errors="replace")
        elif kind == INT32 and count >= 1 and offset + 4 <= len(data):
            out[TAGS[tag]] = struct.unpack_from(">i", data, offset)[0]
    return out


def read_rpmdb(data: bytes) -> list[dict[str, object]]:
    image = bytearray(data)
    if len(image) > 19 and image[18:20] == b"\x02\x02":
        image[18:20] = b"\x01\x01"  # WAL mode needs a -wal file beside it; from memory, read it as rollback
    connection = sqlite3.connect(":memory:")
    try:
        connection.deserialize(bytes(image))  # type: ignore[attr-defined]
        rows = connection.execute("SELECT blob FROM Packages").fetchall()
    finally:
        connection.close()
    return [parse_header(bytes(row[0])) for row in rows if row[0]]


class RpmCataloger:
    name = "rpm"
    package_type = "rpm"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return any(has_suffix(path, p) for p in PATHS)

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        if size > MAX_DB:
            return {"error": f"not read: {size} bytes is over the {MAX_DB} byte cap"}
        try:
            headers = read_rpmdb(stream.read(size))
        except (sqlite3.Error, ValueError, struct.error) as error:
            return {"error": f"unreadable rpmdb: {error}"[:300]}
        return {"packages": [h for h in headers if h.get("name")]}

    def packages(self, path: str, record: Json) -> list[Found]:
        found = []
        for header in record.get("packages", []):
            version = str(header.get("version", ""))
            if header.get("release"):
                version += f"-{header['release']}"
            found.append(Found(str(header["name"]), version, dict(header)))
        return found
