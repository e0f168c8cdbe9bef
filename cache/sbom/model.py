"""What one layer's scan keeps, and the packages the image-wide steps make of it.

A LayerRecord holds facts by path, never finished packages: a package's purl, licences and layer
depend on other layers (os-release, copyright files, later deletions), so they are worked out on
every merge from these facts, and the facts themselves are what is cached per diff_id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = Any


@dataclass
class Evidence:
    """A file a cataloger read: which cataloger, and what it parsed (or why it could not)."""

    cataloger: str
    record: Json

    def to_json(self) -> Json:
        return [self.cataloger, self.record]

    @classmethod
    def from_json(cls, data: Json) -> Evidence:
        return cls(str(data[0]), data[1])


@dataclass
class LayerRecord:
    """The facts of one layer's tar, in tar order semantics (a repeated path: the last entry wins).

    ``files`` and ``dirs`` are every non-directory and directory path; they are what lets the merge
    see a file replacing a folder (or a folder replacing a file) above a lower layer's evidence.
    """

    diff_id: str
    evidence: dict[str, Evidence] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)  # path → why it was not read (unsafe, too big)
    entries: int = 0
    uncompressed_bytes: int = 0

    def to_json(self) -> Json:
        return {
            "diff_id": self.diff_id,
            "evidence": {path: ev.to_json() for path, ev in sorted(self.evidence.items())},
            "whiteouts": sorted(self.whiteouts),
            "opaque": sorted(self.opaque),
            "symlinks": dict(sorted(self.symlinks.items())),
            # one newline-joined string loads far faster than a list of many thousand strings
            "files": "\n".join(sorted(self.files)),
            "dirs": "\n".join(sorted(self.dirs)),
            "skipped": dict(sorted(self.skipped.items())),
            "entries": self.entries,
            "uncompressed_bytes": self.uncompressed_bytes,
        }

    @classmethod
    def from_json(cls, data: Json) -> LayerRecord:
        return cls(
            diff_id=str(data["diff_id"]),
            evidence={path: Evidence.from_json(ev) for path, ev in data["evidence"].items()},
            whiteouts=list(data["whiteouts"]),
            opaque=list(data["opaque"]),
            symlinks=dict(data["symlinks"]),
            files=set(data["files"].split("\n")) if data["files"] else set(),
            dirs=set(data["dirs"].split("\n")) if data["dirs"] else set(),
            skipped=dict(data.get("skipped", {})),
            entries=int(data.get("entries", 0)),
            uncompressed_bytes=int(data.get("uncompressed_bytes", 0)),
        )


@dataclass
class Distro:
    id: str
    version_id: str | None
    name: str | None
    pretty_name: str | None
    path: str

    def qualifier(self) -> str:
        """syft's distro qualifier: ``debian-12``, ``alpine-3.20.1``."""
        return f"{self.id}-{self.version_id}" if self.version_id else self.id


@dataclass
class Package:
    """One package of the image, after the merge and the image-wide steps."""

    name: str
    version: str
    type: str  # deb, apk, rpm, python, npm, go-module, java-archive
    found_by: str
    purl: str
    locations: list[str]
    layer: str  # diff_id of the layer the package is attributed to (docs/sbom.md)
    licenses: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.type, self.name, self.version, self.locations[0] if self.locations else "")
