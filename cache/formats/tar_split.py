"""tar-split records: how dockerd (and containers-storage) rebuild a layer's original tar byte for byte.

When a layer is unpacked, its tar is split into two streams: the files' contents, which go to the
layer's folder, and everything else (headers, padding, the end-of-archive blocks), which is kept
as gzip'd JSON lines (vbatts/tar-split's ``storage`` package, read here by hand: the format is two
record kinds, and its only reader is Go):

- ``{"type": 2, "payload": "<base64>", "position": N}``: raw bytes of the tar, written as they are;
- ``{"type": 1, "name": "<path>", "size": S, "payload": "<base64 crc64>", "position": N}``: the
  contents of the file ``name`` (``name_raw``, base64, when the name is not UTF-8) go here; a
  size of 0 (folders, links, empty files, whiteouts) means no bytes.

Replaying the records in order, with each file's bytes read from the layer's folder, gives the
original tar, whose sha256 is the layer's diff_id. The crc64 is not checked: the caller hashes
the whole tar and compares it with the diff_id, which catches any changed byte. Nothing here is
trusted: positions must count up from 0, a line is bounded, names are returned as bytes for the
caller to confine to its folder (:func:`confined_parts`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from cache.errors import InvalidTarSplit

MAX_LINE = 4 << 20  # one record: a header run with a long pax name is a few KiB; refuse more than this


@dataclass(frozen=True)
class Segment:
    """Raw tar bytes (headers, padding), written as they are."""

    data: bytes


@dataclass(frozen=True)
class FileEntry:
    """The contents of one file of the layer's folder, ``size`` bytes long."""

    name: bytes
    size: int


def records(handle: IO[bytes], what: str) -> Iterator[Segment | FileEntry]:
    """The records of a gzip'd tar-split file, in order; InvalidTarSplit for anything malformed."""
    position = 0
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as lines:
            while line := lines.readline(MAX_LINE + 1):
                if len(line) > MAX_LINE:
                    raise InvalidTarSplit(f"{what}: a record longer than {MAX_LINE} bytes")
                yield _record(line, position, what)
                position += 1
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidTarSplit(f"{what}: not a readable gzip file ({error})") from None


def _record(line: bytes, position: int, what: str) -> Segment | FileEntry:
    try:
        record = json.loads(line)
    except ValueError:
        raise InvalidTarSplit(f"{what}: record {position} is not JSON") from None
    if not isinstance(record, dict) or record.get("position") != position:
        raise InvalidTarSplit(f"{what}: record {position} is not the record at position {position}")
    kind = record.get("type")
    if kind == 2:
        return Segment(_base64(record.get("payload"), position, what))
    if kind != 1:
        raise InvalidTarSplit(f"{what}: record {position} has unknown type {kind!r}")
    size = record.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidTarSplit(f"{what}: record {position} has a bad size {size!r}")
    raw = record.get("name_raw")
    if raw:
        name = _base64(raw, position, what)
    else:
        text = record.get("name")
        if not isinstance(text, str):
            raise InvalidTarSplit(f"{what}: record {position} names no file")
        name = text.encode("utf-8", "surrogateescape")
    return FileEntry(name, size)


def _base64(value: object, position: int, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise InvalidTarSplit(f"{what}: record {position} has a payload that is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTarSplit(f"{what}: record {position} has a payload that is not base64") from None


def confined_parts(name: bytes) -> list[bytes] | None:
    """The path components of a tar name inside its layer folder, or None for a name that would
    leave it (``..``) or names no file (empty). ``./a//b/`` is ``[a, b]``, as a tar reader means it."""
    parts = [part for part in name.split(b"/") if part not in (b"", b".")]
    if not parts or b".." in parts or any(b"\x00" in part for part in parts):
        return None
    return parts
