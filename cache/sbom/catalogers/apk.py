"""apk: ``lib/apk/db/installed``, one database file (top copy wins), ``K:value`` lines per package."""

from __future__ import annotations

from cache.sbom.catalogers.base import StreamedDatabase, has_suffix

INSTALLED = "lib/apk/db/installed"
_KEYS = {"P": "name", "V": "version", "A": "arch", "L": "license", "o": "origin", "m": "maintainer", "U": "url"}


class ApkCataloger(StreamedDatabase):
    name = "apk"
    package_type = "apk"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return has_suffix(path, INSTALLED)

    def parse_text(self, text: str) -> list[dict[str, str]]:
        packages: list[dict[str, str]] = []
        current: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                if current.get("name"):
                    packages.append(current)
                current = {}
                continue
            key, sep, value = line.partition(":")
            if sep and key in _KEYS and _KEYS[key] not in current:
                current[_KEYS[key]] = value
        if current.get("name"):
            packages.append(current)
        return packages
