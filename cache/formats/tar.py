"""A forward-only tar reader for streams that reads member data into the caller's own buffers.

tarfile's stream mode ("r|") joins and slices its buffer on every read and allocates a new bytes
object per read; at a gigabyte a second the page faults of those fresh allocations cost more than
hashing the bytes. :class:`TarStream` parses the 512-byte headers itself and hands member data
out through :meth:`TarStream.readinto`, straight from the source's ``readinto`` into a buffer the
caller reuses: one copy (the kernel's), no allocation per read.

Accepted, as tarfile reads them: ustar and POSIX (the prefix field), v7, GNU (long names ``L``,
long link names ``K``, base-256 numbers), pax (``x`` per member, ``g`` global; the ``path``,
``linkpath`` and ``size`` records), and a gzip, bzip2 or xz compressed tar (:func:`open_tar`).
Refused: GNU sparse members. Errors: :class:`TarCutOff` when the stream ends inside a header,
member data or padding; :class:`TarFormatError` for a block that is not a tar header or bad
compressed data. A stream that ends cleanly at a member boundary without the end-of-archive
blocks simply ends, as with tarfile: what was read is whole (:attr:`TarStream.complete` tells
a caller who needs the end-of-archive blocks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cache.formats.compression import CorruptLayer, DecompressingReader, TruncatedLayer

BLOCK = 512
META_LIMIT = 1 << 20  # pax and GNU long-name data of one member, all its headers together: far
# above any real name, small enough that parsing it costs little (a run of headers is refused)
_ZERO = bytes(BLOCK)
_NO_DATA = frozenset(b"123456")  # links, devices, folders, fifos: their size field means nothing
_POSIX_MAGIC = b"ustar\x00"
_HIGH_BYTES = bytes(range(128, 256))
_PAX_KEYS = frozenset({"path", "linkpath", "size"})  # the records used; others are dropped (bounded)


class TarError(Exception):
    """The stream is not a readable tar."""


class TarFormatError(TarError):
    """A block that is not a tar header, or data that does not decompress."""


class TarCutOff(TarError):
    """The stream ended inside a header, member data or padding."""


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


class SeekableFile(Readable, Protocol):
    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def tell(self) -> int: ...

    def fileno(self) -> int: ...


@dataclass(frozen=True)
class TarMember:
    name: str
    type: bytes  # the one-byte type flag (b"0" regular, b"1" hard link, b"2" symlink, ...)
    size: int  # bytes of data that follow the header
    linkname: str
    offset: int  # where the member's (last) header starts in the stream
    mode: int = 0o644  # the permission bits (catalogers look for executables)

    def isfile(self) -> bool:
        return self.type in (b"0", b"7") or (self.type == b"\x00" and not self.name.endswith("/"))

    def islnk(self) -> bool:
        return self.type == b"1"

    def issym(self) -> bool:
        return self.type == b"2"

    def isdir(self) -> bool:  # an old-style entry whose name ends in "/" is a folder, as for tarfile
        return self.type == b"5" or (self.type == b"\x00" and self.name.endswith("/"))


def _nts(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """An octal field, or GNU base-256 (first byte 0x80, or 0xff for negative), as tarfile.nti."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[0] == 0xFF else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarFormatError(f"invalid number {field!r} in a tar header") from None


def header_ok(block: bytes | bytearray | memoryview) -> bool:
    """True when ``block`` is a tar header whose checksum matches (signed or unsigned, as tarfile)."""
    if len(block) < BLOCK:
        return False
    block = bytes(block[:BLOCK])
    try:
        stored = _number(block[148:156])
    except TarFormatError:
        return False
    # The checksum field counts as 8 spaces (256). Summing only the non-zero bytes of a header
    # (mostly zeros) is 7 times faster than unpacking all 512: it is most of a header-only pass.
    rest = block[:148] + block[156:]
    unsigned = 256 + sum(rest.translate(None, b"\x00"))
    if stored == unsigned:
        return True
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))  # each counts 256 less when signed
    return stored == unsigned - 256 * high


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records of the keys used; an empty value unsets the key (kept as "").

    Only the used keys are kept: a run of pax headers with ever new keys would otherwise grow the
    records held for one member (or, global ones, for the whole stream) without bound.
    """
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = data[pos : pos + length]
        if length <= 0 or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("invalid pax header record")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        name = key.decode("utf-8", "surrogateescape")
        if name in _PAX_KEYS:
            records[name] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarStream:
    """Members of a tar read front to back from ``source`` (anything with ``readinto``).

    Iterate for the members; between two members, :meth:`readinto` / :meth:`read` give the
    current member's data. Data not read is skipped (read and dropped) when the next member is
    asked for. :attr:`offset` counts the bytes taken from the source.
    """

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._header = bytearray(BLOCK)
        self._left = 0  # data of the current member not read yet
        self._pad = 0  # padding after it
        self._global: dict[str, str] = {}
        self._scratch: memoryview | None = None
        self._ended = False
        self.complete = False  # True once the end-of-archive blocks were read
        self.offset = 0

    def __iter__(self) -> Iterator[TarMember]:
        while (member := self.next()) is not None:
            yield member

    def next(self) -> TarMember | None:
        """The next member, or None at the end of the archive."""
        if self._ended:
            return None
        self._skip(self._left + self._pad)
        self._left = self._pad = 0
        long_name = long_link = None
        pax: dict[str, str] = {}
        meta_left = META_LIMIT
        while True:
            start = self.offset
            got = self._fill(memoryview(self._header))
            if got == 0 and not pax and long_name is None and long_link is None:
                self._ended = True  # a clean end at a member boundary (no end-of-archive blocks)
                return None
            if got < BLOCK:
                raise TarCutOff(f"the tar ends inside a header at byte {start + got}")
            block = bytes(self._header)
            if block == _ZERO:
                self._ended = self.complete = True
                finish = getattr(self._source, "finish", None)
                if finish is not None:
                    finish()  # a compressed tar: its stream must end whole too (see _Decompressed)
                return None
            if not header_ok(block):
                raise TarFormatError(f"bad tar header checksum at byte {start}")
            kind = block[156:157]
            size = _number(block[124:136])
            if size < 0:
                raise TarFormatError(f"negative size in the tar header at byte {start}")
            if kind in (b"L", b"K", b"x", b"g"):
                if size > meta_left:
                    raise TarFormatError(f"tar extended headers of more than {META_LIMIT} bytes at byte {start}")
                meta_left -= size
                data = self._meta(size)
                if kind == b"L":
                    long_name = _nts(data)
                elif kind == b"K":
                    long_link = _nts(data)
                elif kind == b"x":
                    pax.update(_pax_records(data))
                else:
                    self._global.update(_pax_records(data))
                continue
            if kind == b"S":
                raise TarFormatError(f"GNU sparse member at byte {start} (not supported)")
            return self._member(block, kind, size, start, long_name, long_link, {**self._global, **pax})

    def _member(
        self, block: bytes, kind: bytes, size: int, start: int,
        long_name: str | None, long_link: str | None, records: dict[str, str],
    ) -> TarMember:
        name = _nts(block[0:100])
        prefix = _nts(block[345:500]) if block[257:263] == _POSIX_MAGIC else ""
        if prefix:
            name = f"{prefix}/{name}"
        name = records.get("path") or long_name or name
        linkname = records.get("linkpath") or long_link or _nts(block[157:257])
        if records.get("size"):
            text = records["size"]
            if not text.isdigit():
                raise TarFormatError(f"invalid pax size {text!r} at byte {start}")
            size = int(text)
        if kind and kind[0] in _NO_DATA:
            size = 0
        self._left, self._pad = size, -size % BLOCK
        try:
            mode = _number(block[100:108]) & 0o7777
        except TarFormatError:
            mode = 0  # a mode field no tool reads as a number: treat the member as not executable
        return TarMember(name, kind, size, linkname, start, mode)

    def _meta(self, size: int) -> bytes:
        """The data of a pax or GNU long-name header (bounded by the caller), its padding skipped."""
        buffer = bytearray(size)
        if self._fill(memoryview(buffer)) < size:
            raise TarCutOff(f"the tar ends inside an extended header at byte {self.offset}")
        self._skip(-size % BLOCK)
        return bytes(buffer)

    @property
    def left(self) -> int:
        """Bytes of the current member's data not read yet."""
        return self._left

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the current member's data; fewer bytes only where the member ends."""
        want = min(len(view), self._left)
        got = self._fill(view[:want]) if want else 0
        self._left -= got
        if got < want:
            raise TarCutOff(f"the tar ends inside member data at byte {self.offset}")
        return got

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current member's data (for small members)."""
        buffer = bytearray(min(size, self._left))
        self.readinto(memoryview(buffer))  # fills it all, or raises TarCutOff
        return bytes(buffer)  # one copy (slicing first made two: up to 3 times a config's size held)

    def _fill(self, view: memoryview) -> int:
        """Read until ``view`` is full or the source ends; how many bytes came."""
        total = 0
        while total < len(view):
            got = self._source.readinto(view[total:]) or 0
            if got <= 0:
                break
            total += got
        self.offset += total
        return total

    def _skip(self, count: int) -> None:
        if count and self._scratch is None:
            self._scratch = memoryview(bytearray(64 << 10))
        while count:
            assert self._scratch is not None
            step = min(count, len(self._scratch))
            if self._fill(self._scratch[:step]) < step:
                raise TarCutOff(f"the tar ends inside member data or padding at byte {self.offset}")
            count -= step


class TarHeaders(TarStream):
    """The members of a plain (uncompressed) tar file, seeking past their data instead of reading it.

    A first look at a docker-archive file: only the 512-byte headers are read, whatever the
    layers weigh; a member's data can still be read with :meth:`read` before the next member.
    Data that would run past the end of the file is :class:`TarCutOff`, as in a stream.
    """

    def __init__(self, handle: SeekableFile) -> None:
        super().__init__(handle)
        self._handle = handle
        self._size = os.fstat(handle.fileno()).st_size
        self.offset = handle.tell()

    def _skip(self, count: int) -> None:
        if self.offset + count > self._size:
            raise TarCutOff(f"the tar ends inside member data or padding at byte {self._size}")
        self.offset += count
        self._handle.seek(self.offset)


class _Prefixed:
    """``head`` (bytes already read to sniff the format), then the rest of ``source``."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = memoryview(head)
        self._source = source

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._source.readinto(buffer) or 0

    def read(self, size: int) -> bytes:
        buffer = bytearray(size)
        got = self.readinto(memoryview(buffer))
        return bytes(buffer[:got])


class _Decompressed:
    """A compressed tar's bytes, decompressed by cache.formats.compression, its errors the tar reader's."""

    def __init__(self, kind: str, source: _Prefixed) -> None:
        self._reader = DecompressingReader(source, kind)

    def readinto(self, buffer: Any) -> int:
        try:
            return self._reader.readinto(buffer)
        except TruncatedLayer as error:
            raise TarCutOff(str(error)) from None
        except CorruptLayer as error:
            raise TarFormatError(str(error)) from None

    def finish(self) -> None:
        """Read the compressed stream to its end once the tar has ended: corrupt compressed data
        can still decode to zero blocks (isal accepts some damaged Huffman tables that zlib refuses),
        and only the stream's own end (gzip's CRC and length) proves it whole."""
        scratch = memoryview(bytearray(64 << 10))
        while self.readinto(scratch):
            pass


_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def open_tar(source: Readable) -> TarStream:
    """A :class:`TarStream` over ``source``, decompressing a gzip, bzip2 or xz tar first."""
    head = bytearray(BLOCK)
    got = 0
    while got < BLOCK and (step := source.readinto(memoryview(head)[got:]) or 0) > 0:
        got += step
    prefixed = _Prefixed(bytes(head[:got]), source)
    if not header_ok(head[:got]):  # a tar whose first name starts like a magic number stays a tar
        for magic, kind in _MAGIC:
            if head[:got].startswith(magic):
                return TarStream(_Decompressed(kind, prefixed))
    return TarStream(prefixed)
