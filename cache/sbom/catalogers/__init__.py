"""Every cataloger, in the order they are asked about a file (the first that wants it reads it).

SCANNER_VERSION is part of every cached layer record's key: change it whenever a cataloger reads
different files or writes a different record, and old records are simply not found again.
"""

from __future__ import annotations

from cache.sbom.catalogers.apk import ApkCataloger
from cache.sbom.catalogers.base import Cataloger
from cache.sbom.catalogers.dpkg import CopyrightCataloger, DpkgCataloger
from cache.sbom.catalogers.golang import GoBinaryCataloger
from cache.sbom.catalogers.java import JavaArchiveCataloger
from cache.sbom.catalogers.npm import NpmCataloger
from cache.sbom.catalogers.osrelease import OsReleaseCataloger
from cache.sbom.catalogers.python import PythonCataloger
from cache.sbom.catalogers.rpm import RpmCataloger

SCANNER_VERSION = "2"  # 2: warnings in records, printable paths, streamed dpkg/apk, bounded jars

CATALOGERS: tuple[Cataloger, ...] = (
    OsReleaseCataloger(),
    DpkgCataloger(),
    CopyrightCataloger(),
    ApkCataloger(),
    PythonCataloger(),
    NpmCataloger(),
    RpmCataloger(),
    JavaArchiveCataloger(),
    GoBinaryCataloger(),  # last: it looks at every executable, the others match by name
)

BY_NAME: dict[str, Cataloger] = {cataloger.name: cataloger for cataloger in CATALOGERS}
