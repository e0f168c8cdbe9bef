"""What a cataloger is: it picks files by path while the tar streams, parses each one into a small
JSON record (cached per layer), and later turns visible records into package facts.

Dropped data is never silent. A record is ``{"error": why}`` when nothing was taken from the file
(over a cap, unparseable), and carries ``"warnings": [...]`` when something was taken and something
dropped (a package cap, a zip entry refused). Both are cached with the layer's record and become
the document's warnings (cache/sbom/warnings.py) when the file is visible in the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Json = Any


class Reader(Protocol):
    """A file's bytes as the tar streams past (cache.formats.tar.TarStream): read forward only."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class Found:
    """A package as one record states it, before distro, licences from elsewhere and attribution."""

    name: str
    version: str
    fields: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class Cataloger(Protocol):
    name: str  # the id stored in layer records; renaming one means a new scanner version
    package_type: str  # "" for catalogers that only supply facts to others (os-release, copyright)

    def wants(self, path: str, mode: int, size: int) -> bool: ...

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        """Parse the file from its tar stream; None when it turns out not to be evidence at all."""

    def packages(self, path: str, record: Json) -> list[Found]: ...


class SizeCapped:
    """A cataloger that reads a whole file into memory, if it is at most ``max_bytes``."""

    name = ""
    package_type = ""
    max_bytes = 8 << 20

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        if size > self.max_bytes:
            return over_cap(size, self.max_bytes)
        try:
            return self.parse(path, stream.read(size))
        except (ValueError, KeyError, TypeError, UnicodeError) as error:
            return {"error": f"unparseable: {type(error).__name__}: {error}"[:300]}

    def parse(self, path: str, data: bytes) -> Json | None:
        raise NotImplementedError

    def packages(self, path: str, record: Json) -> list[Found]:
        return []


class StreamedDatabase:
    """A package database of paragraphs, one per package (dpkg status, apk installed), parsed as
    it streams: no whole-file cap that turns a big database into "0 packages". What is bounded is
    the bytes read and the packages kept; past either, what was read is kept and a warning says so."""

    name = ""
    package_type = ""
    # a real dpkg status is 1 to 10 MB and a few thousand packages; these are 50 and 20 times that,
    # and parsing runs near 90 MB/s, so the worst case costs seconds, not minutes or gigabytes
    max_bytes = 512 << 20
    max_paragraph = 16 << 20  # one package's stanza; real ones are a few KiB
    max_packages = 100_000

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        pieces = Paragraphs(stream, self.max_bytes, self.max_paragraph)
        packages: list[dict[str, str]] = []
        warnings: list[str] = []
        for text in pieces:
            packages.extend(self.parse_text(text))
            if len(packages) > self.max_packages:
                del packages[self.max_packages:]
                warnings.append(f"listed only the first {self.max_packages} packages: the rest was not read")
                break
        if pieces.stopped:
            warnings.append(pieces.stopped)
        return {"packages": packages, **({"warnings": warnings} if warnings else {})}

    def parse_text(self, text: str) -> list[dict[str, str]]:
        """The packages of whole paragraphs of the file."""
        raise NotImplementedError

    def packages(self, path: str, record: Json) -> list[Found]:
        return [Found(p["name"], p.get("version", ""), p) for p in record.get("packages", [])]


def over_cap(size: int, cap: int) -> Json:
    return {"error": f"not read: {size} bytes is over the {cap} byte cap"}


def record_warnings(record: Json) -> list[str]:
    """What a record says was dropped: its error (nothing read), then its warnings (part read)."""
    if not isinstance(record, dict):
        return []
    found = [str(record["error"])] if "error" in record else []
    return found + [str(w) for w in record.get("warnings", [])]


class Paragraphs:
    """A file of blank-line separated paragraphs (dpkg status, apk installed) as it streams, in
    pieces that end at a paragraph boundary: memory is one piece, not the file. Reading stops at
    ``max_bytes``, or when one paragraph alone passes ``max_paragraph``; ``stopped`` then says why."""

    chunk = 1 << 20

    def __init__(self, stream: Reader, max_bytes: int, max_paragraph: int) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._max_paragraph = max_paragraph
        self.stopped = ""

    def __iter__(self) -> Iterator[str]:
        pending = bytearray()
        read = 0
        while read < self._max_bytes:
            chunk = self._stream.read(min(self.chunk, self._max_bytes - read))
            if not chunk:
                break
            read += len(chunk)
            pending += chunk
            cut = pending.rfind(b"\n\n", max(0, len(pending) - len(chunk) - 1))  # earlier ones are cut already
            if cut >= 0:
                yield text_of(bytes(pending[:cut + 1]))
                del pending[:cut + 2]
            elif len(pending) > self._max_paragraph:
                self.stopped = f"one paragraph is over {self._max_paragraph} bytes: it and the rest were not read"
                return
        if read >= self._max_bytes and self._stream.read(1):
            self.stopped = f"read only the first {self._max_bytes} bytes: the rest was not read"
            return  # the last paragraph may be cut short: it is left out, not half read
        yield text_of(bytes(pending))


def has_suffix(path: str, suffix: str) -> bool:
    """``path`` is ``suffix`` or ends with ``/suffix`` (catalogers match at any depth, as syft's ``**/``)."""
    return path == suffix or path.endswith("/" + suffix)


def text_of(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822-style stanzas separated by blank lines (dpkg status, apk's ``K:V`` lines differ)."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            current[last] = value.strip()
    if current:
        out.append(current)
    return out
