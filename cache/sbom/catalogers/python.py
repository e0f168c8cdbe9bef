"""Python: installed distributions (``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO``, ``*.egg-info``)."""

from __future__ import annotations

import email.parser
import posixpath

from cache.sbom.catalogers.base import Found, Json, SizeCapped, text_of

_LICENSE_CLASSIFIER = "License :: "


class PythonCataloger(SizeCapped):
    name = "python"
    package_type = "python"
    max_bytes = 16 << 20

    def wants(self, path: str, mode: int, size: int) -> bool:
        parent, base = posixpath.split(path)
        if base == "METADATA":
            return parent.endswith(".dist-info")
        if base == "PKG-INFO":
            return parent.endswith(".egg-info")
        return base.endswith(".egg-info")  # a single-file egg-info (distutils installs)

    def parse(self, path: str, data: bytes) -> Json:
        headers = email.parser.HeaderParser().parsestr(text_of(data))  # headers only: the body is the README
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            return {"error": "no Name or Version"}
        licenses: list[str] = []
        expression = headers.get("License-Expression")
        if expression:
            licenses.append(expression.strip())
        else:
            for classifier in headers.get_all("Classifier") or []:
                if classifier.startswith(_LICENSE_CLASSIFIER):
                    licenses.append(classifier.rsplit(" :: ", 1)[-1].strip())
            plain = (headers.get("License") or "").strip()
            if plain and "\n" not in plain and len(plain) < 80 and plain.upper() != "UNKNOWN" and plain not in licenses:
                licenses.append(plain)
        return {"name": str(name).strip(), "version": str(version).strip(), "licenses": licenses,
                "author": str(headers.get("Author") or headers.get("Author-email") or "").strip()[:200]}

    def packages(self, path: str, record: Json) -> list[Found]:
        if "name" not in record:
            return []
        return [Found(record["name"], record["version"], record)]
