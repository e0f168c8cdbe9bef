"""Scan one stored layer: stream its tar once, read only what a cataloger wants, keep facts by path.

Nothing is written to disk and nothing is held whole: the tar is read front to back by the one tar
reader (cache.formats.tar) from the decompressing reader; a wanted file is read up to its
cataloger's cap; everything else is skipped as the stream moves on. Whiteouts are recorded, never
applied inside their own layer.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import BinaryIO

from cache.errors import LayerhoardError
from cache.formats.compression import DecompressingReader
from cache.formats.tar import TarError, TarMember, TarStream
from cache.sbom.catalogers import CATALOGERS
from cache.sbom.catalogers.base import Cataloger
from cache.sbom.model import Evidence, LayerRecord
from cache.sbom.tarpaths import OPAQUE, WHITEOUT, normalise
from cache.sbom.text import printable, printable_json


class InvalidLayerTar(LayerhoardError):
    """A layer whose uncompressed bytes are not a tar archive."""


def scan_layer(
    raw: BinaryIO, compression: str, diff_id: str, catalogers: Sequence[Cataloger] = CATALOGERS
) -> LayerRecord:
    stream = DecompressingReader(raw, compression)
    record = LayerRecord(diff_id)
    tar = TarStream(stream)  # an empty layer (no bytes at all) simply has no members
    try:
        for member in tar:
            record.entries += 1
            _take(tar, member, record, catalogers)
    except TarError as error:
        raise InvalidLayerTar(f"layer {diff_id} is not a valid tar archive: {error}") from None
    record.uncompressed_bytes = stream.uncompressed_bytes
    return record


def _take(tar: TarStream, member: TarMember, record: LayerRecord, catalogers: Sequence[Cataloger]) -> None:
    path = normalise(member.name)
    if path is None:
        if member.name.strip("./"):
            record.skipped[printable(member.name[:200])] = "path climbs out of the layer"
        return
    folder, base = posixpath.split(path)
    if base.startswith(WHITEOUT):
        if base == OPAQUE:
            record.opaque.append(folder)
        elif not base.startswith(WHITEOUT + WHITEOUT):  # .wh..wh.* are aufs internals, not deletions
            record.whiteouts.append(posixpath.join(folder, base[len(WHITEOUT):]))
        return
    # the same path again in one tar: the last entry wins
    record.evidence.pop(path, None)
    record.symlinks.pop(path, None)
    record.skipped.pop(path, None)
    if member.isdir():
        record.files.discard(path)
        record.dirs.add(path)
        return
    record.dirs.discard(path)
    record.files.add(path)
    if member.issym():
        record.symlinks[path] = printable(member.linkname)
        return
    if member.islnk():
        _take_hardlink(path, member, record, catalogers)
        return
    if not member.isfile():
        return
    for cataloger in catalogers:
        if cataloger.wants(path, member.mode, member.size):
            parsed = cataloger.read(path, tar, member.size)  # reads this member's data, at most its size
            if parsed is not None:  # the one place where parsed file contents enter a record
                record.evidence[path] = Evidence(cataloger.name, printable_json(parsed))
                return


def _take_hardlink(path: str, member: TarMember, record: LayerRecord, catalogers: Sequence[Cataloger]) -> None:
    """A hard link names an earlier entry of this layer: it shares that entry's evidence."""
    target = normalise(member.linkname)
    if target is not None and target in record.evidence:
        record.evidence[path] = record.evidence[target]
        return
    wanting = [c for c in catalogers if c.wants(path, member.mode, member.size)]
    # a target its cataloger read and found to be no evidence (a C binary linked as a Go one) drops nothing
    if wanting and (target is None or not any(c.wants(target, member.mode, member.size) for c in wanting)):
        record.skipped[path] = "hard link to a file that was not read"
