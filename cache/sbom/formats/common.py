"""What every format shares: the tool's name and version, a creation time, stable ids."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import uuid
from importlib import metadata

from cache.sbom.generate import ImageSbom
from cache.sbom.model import Package

TOOL = "layerhoard"
_NAMESPACE = uuid.UUID("6f1d3c1e-3a0e-4a57-9f2b-6c61b8e4d0a1")


def tool_version() -> str:
    try:
        return metadata.version("layerhoard")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def created() -> str:
    """Now, or SOURCE_DATE_EPOCH when set, so a build can make byte-identical documents."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch and epoch.isdigit()
              else datetime.datetime.now(datetime.timezone.utc))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def document_uuid(sbom: ImageSbom, kind: str) -> uuid.UUID:
    """The same image and scanner give the same document id (a rebuilt package stays reproducible)."""
    return uuid.uuid5(_NAMESPACE, f"{kind}|{sbom.ref}|{sbom.digest}|{sbom.scanner_version}|{tool_version()}")


def package_id(package: Package) -> str:
    """A short stable id for one package: its fields and location, as syft hashes them."""
    text = "|".join([package.type, package.name, package.version, package.purl, *package.locations])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:80] or "x"
