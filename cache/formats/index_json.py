"""index.json, the names of an OCI image layout: read, written and kept in memory in one place.

The store's index.json and an exported layout's are the same document: an OCI image index whose
entries name manifests with ``org.opencontainers.image.ref.name``. Both are read whole and replaced
whole (atomically), so a change costs what encoding and writing the file costs. Two things keep
that proportional to what changed rather than to the cache:

- entries are encoded one by one with the json module's C encoder (an indented ``json.dumps``
  falls back to the pure-Python encoder: 80 ms for 10,000 entries against 20 ms), one per line,
  so the file stays readable and diffable;
- :class:`NameFile` keeps the entries it last read or wrote, with their encoded lines, and while
  the file on disk is still the one it wrote (same inode, size and mtime) it neither reads nor
  parses it again, and encodes only entries that changed.

It trusts nothing in the file: entries that are not objects are skipped, and a file past
``MAX_INDEX_JSON`` is refused in one line (every command reads it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import NamedTuple

from cache.errors import InvalidDigest, LayerhoardError
from cache.model.digest import Digest, parse_digest
from cache.store.folder import Folder, UnsafeFile
from cache.store.fsutil import write_atomic

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MAX_INDEX_JSON = 64 << 20  # 2,000 images take about 1 MB: past this it is damage, not a cache

Entry = dict[str, object]


def ref_name_of(entry: Entry) -> str | None:
    annotations = entry.get("annotations")
    if isinstance(annotations, dict):
        name = annotations.get(REF_NAME)
        return name if isinstance(name, str) else None
    return None


class IndexEntry(NamedTuple):
    """One entry of index.json, typed: its name (None when another tool listed it unnamed), the
    manifest it points at, and the entry as stored (annotations, platform), to write back unchanged."""

    name: str | None
    digest: Digest
    media_type: str
    size: int
    raw: Entry


def typed_entries(entries: Iterable[Entry]) -> list[IndexEntry]:
    """``entries`` typed; an entry without a valid digest (damage, or a tool we do not know) is left out."""
    out = []
    for entry in entries:
        try:
            digest = parse_digest(entry.get("digest"))  # type: ignore[arg-type]
        except InvalidDigest:
            continue
        media_type, size = entry.get("mediaType"), entry.get("size")
        out.append(IndexEntry(ref_name_of(entry), digest, media_type if isinstance(media_type, str) else "",
                              size if isinstance(size, int) else 0, entry))
    return out


def parse_entries(raw: bytes, what: str) -> list[Entry]:
    """The manifest entries of an index.json's bytes (entries that are not objects are skipped)."""
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise LayerhoardError(f"{what} is not valid JSON: {error}") from error
    manifests = data.get("manifests", []) if isinstance(data, dict) else []
    return [entry for entry in manifests if isinstance(entry, dict)] if isinstance(manifests, list) else []


def read_entries(path: str | os.PathLike[str], what: str) -> list[Entry]:
    """The entries of the index.json at ``path`` (a layout we did not write: read with the same
    size bound as our own). FileNotFoundError when there is none."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_INDEX_JSON + 1)
    if len(raw) > MAX_INDEX_JSON:
        raise LayerhoardError(f"{what} is more than {MAX_INDEX_JSON} bytes: not an index of images")
    return parse_entries(raw, what)


def encode_line(entry: Entry) -> bytes:
    return json.dumps(entry, sort_keys=True).encode()


def encode_document(lines: Iterable[bytes], extra: dict[str, object] | None = None) -> bytes:
    """An OCI image index holding the encoded entries ``lines``, one per line."""
    head = {"mediaType": INDEX_MEDIA_TYPE, "schemaVersion": 2, **(extra or {})}
    fields = b"".join(b'  "%s": %s,\n' % (key.encode(), json.dumps(value).encode())
                      for key, value in sorted(head.items()))
    body = b",\n    ".join(lines)
    return b'{\n' + fields + b'  "manifests": [\n    ' + body + b'\n  ]\n}\n' if body else \
        b'{\n' + fields + b'  "manifests": []\n}\n'


class NameFile:
    """The index.json in ``folder`` (the store's root), read through the folder's descriptor."""

    def __init__(self, folder: Folder, name: str = "index.json") -> None:
        self.folder, self.name = folder, name
        self.path = folder.path / name
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) of the file we hold
        self._entries: list[Entry] = []
        self._lines: dict[str, tuple[Entry, bytes]] = {}  # by ref name: the entry and its encoding

    def exists(self) -> bool:
        return self.folder.lstat(self.name) is not None

    def entries(self) -> list[Entry]:
        """Every entry, as on disk now (a copy of the list; do not change the entries)."""
        info = self.folder.lstat(self.name)
        if info is None:
            return []
        if self._seen is not None and self._seen == (info.st_ino, info.st_size, info.st_mtime_ns):
            return list(self._entries)
        self._entries = self._read()
        self._seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        return list(self._entries)

    def write(self, entries: list[Entry]) -> None:
        """Replace the file with ``entries`` (atomically); only new or changed entries are encoded."""
        lines: dict[str, tuple[Entry, bytes]] = {}
        encoded = []
        for entry in entries:
            ref = ref_name_of(entry) or ""
            known = self._lines.get(ref)
            line = known[1] if known is not None and known[0] == entry else encode_line(entry)
            lines[ref] = (entry, line)
            encoded.append(line)
        write_atomic(self.path, encode_document(encoded))
        self._lines, self._entries = lines, list(entries)
        info = self.folder.lstat(self.name)
        self._seen = None if info is None else (info.st_ino, info.st_size, info.st_mtime_ns)

    def _read(self) -> list[Entry]:
        try:
            fd = self.folder.open(self.name)
        except FileNotFoundError:
            return []
        except UnsafeFile as error:
            raise LayerhoardError(f"{error}: move it aside and pull the images again") from None
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            if size > MAX_INDEX_JSON:
                raise LayerhoardError(
                    f"{self.path} is {size} bytes, more than the {MAX_INDEX_JSON} an index of "
                    "images may take; it is damaged or not ours: move it aside and pull the images again"
                )
            raw = handle.read(MAX_INDEX_JSON + 1)
        return parse_entries(raw, str(self.path))
