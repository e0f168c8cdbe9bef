"""What a cataloger is: it picks files by path while the tar streams, parses each one into a small
JSON record (cached per layer), and later turns visible records into package facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any, Protocol

Json = Any


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

    def read(self, path: str, stream: IO[bytes], size: int) -> Json | None:
        """Parse the file from its tar stream; None when it turns out not to be evidence at all."""

    def packages(self, path: str, record: Json) -> list[Found]: ...


class SizeCapped:
    """A cataloger that reads a whole file into memory, if it is at most ``max_bytes``."""

    name = ""
    package_type = ""
    max_bytes = 8 << 20

    def read(self, path: str, stream: IO[bytes], size: int) -> Json | None:
        if size > self.max_bytes:
            return {"error": f"not read: {size} bytes is over the {self.max_bytes} byte cap"}
        try:
            return self.parse(path, stream.read(size))
        except (ValueError, KeyError, TypeError, UnicodeError) as error:
            return {"error": f"unparseable: {type(error).__name__}: {error}"[:300]}

    def parse(self, path: str, data: bytes) -> Json | None:
        raise NotImplementedError

    def packages(self, path: str, record: Json) -> list[Found]:
        return []


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
