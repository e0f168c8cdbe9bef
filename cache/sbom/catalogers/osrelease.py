"""os-release: facts only, read wherever it sits (etc/os-release, usr/lib/os-release)."""

from __future__ import annotations

import shlex

from cache.sbom.catalogers.base import Json, SizeCapped, text_of

PATHS = ("etc/os-release", "usr/lib/os-release")


class OsReleaseCataloger(SizeCapped):
    name = "os-release"
    package_type = ""
    max_bytes = 64 << 10

    def wants(self, path: str, mode: int, size: int) -> bool:
        return path in PATHS

    def parse(self, path: str, data: bytes) -> Json:
        fields: dict[str, str] = {}
        for line in text_of(data).splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep or key.startswith("#"):
                continue
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value.strip("\"'")]
            fields[key.strip()] = words[0] if words else ""
        return {"fields": fields}
