"""npm: ``package.json`` of each installed package, ``node_modules/<name>`` or ``node_modules/@scope/<name>``.

Other package.json files (an app's root, a package's inner ``lib/package.json`` with only
``"type"``) are not installed packages and are not read.
"""

from __future__ import annotations

import json

from cache.sbom.catalogers.base import Found, Json, SizeCapped


def _licences(data: dict[str, object]) -> list[str]:
    found: list[str] = []
    value = data.get("license")
    items = data.get("licenses") if value is None else [value]
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            item = item.get("type")
        if isinstance(item, str) and item.strip():
            found.append(item.strip())
    return found


class NpmCataloger(SizeCapped):
    name = "npm"
    package_type = "npm"
    max_bytes = 4 << 20

    def wants(self, path: str, mode: int, size: int) -> bool:
        parts = path.split("/")
        if len(parts) < 3 or parts[-1] != "package.json":
            return False
        if parts[-3] == "node_modules":
            return not parts[-2].startswith(("@", "."))
        return len(parts) >= 4 and parts[-4] == "node_modules" and parts[-3].startswith("@")

    def parse(self, path: str, data: bytes) -> Json:
        document = json.loads(data)
        if not isinstance(document, dict):
            return {"error": "not a JSON object"}
        name, version = document.get("name"), document.get("version")
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            return {"error": "no name or version"}
        author = document.get("author")
        if isinstance(author, dict):
            author = author.get("name")
        return {"name": name, "version": version, "licenses": _licences(document),
                "author": author[:200] if isinstance(author, str) else ""}

    def packages(self, path: str, record: Json) -> list[Found]:
        if "name" not in record:
            return []
        return [Found(record["name"], record["version"], record)]
