"""cache.formats.tar against tarfile itself: every header form, compressed tars, truncation, bad headers."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from cache.formats.tar import BLOCK, TarCutOff, TarFormatError, TarMember, TarStream, header_ok, open_tar


class Trickle(io.RawIOBase):
    """A forward-only source that returns at most ``step`` bytes per read, as a socket may."""

    def __init__(self, data: bytes, step: int = 1 << 30) -> None:
        self._inner = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)[: self._step]
        return self._inner.readinto(view)


def entries(data: bytes, step: int = 1 << 30, chunk: int = 4096) -> list[tuple[str, bytes, int, str, bytes]]:
    """(name, type, size, linkname, data) of every member, the data read in ``chunk``-byte pieces."""
    out = []
    tar = open_tar(Trickle(data, step))
    buffer = memoryview(bytearray(chunk))
    for member in tar:
        body = b""
        while got := tar.readinto(buffer):
            body += bytes(buffer[:got])
        out.append((member.name, member.type, member.size, member.linkname, body))
    return out


def by_tarfile(data: bytes) -> list[tuple[str, bytes, int, str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isreg() else None
            body = handle.read() if handle else b""
            name = member.name + ("/" if member.isdir() and not member.name.endswith("/") else "")
            size = member.size if member.isreg() else 0
            out.append((name, member.type, size, member.linkname, body))
    return out


def build(fmt: int, mode: str = "w", pax_headers: dict[str, str] | None = None, big: bool = True) -> bytes:
    """A tar exercising names, links and sizes around the block boundaries, written by tarfile."""
    buffer = io.BytesIO()
    long_dir = "d" * 90 + "/" + "e" * 60  # over 100 characters, splits into ustar prefix + name
    very_long = "/".join(["segment" * 12] * 4)  # 340 characters: GNU longname or pax path
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt, pax_headers=pax_headers or {}) as tar:  # type: ignore[call-overload]
        def add(name: str, data: bytes | None, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if data is not None else 0
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("folder/", None, tarfile.DIRTYPE)
        for size in (0, 1, 511, 512, 513, 100_000) if big else (0, 1, 511, 512, 513):
            add(f"folder/file{size}", os.urandom(size))
        add(f"{long_dir}/f.bin", b"prefixed")
        if fmt != tarfile.USTAR_FORMAT:
            add(very_long, b"long name")
            add("link-long", None, tarfile.SYMTYPE, very_long)
            add("hard-long", None, tarfile.LNKTYPE, very_long)
        add("sym", None, tarfile.SYMTYPE, "folder/file1")
        add("hard", None, tarfile.LNKTYPE, "folder/file1")
        if fmt == tarfile.PAX_FORMAT:
            add("naïve-ünïcode.txt", b"pax path")
    return buffer.getvalue()


FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_members_as_tarfile(fmt: str) -> None:
    data = build(FORMATS[fmt])
    expected = by_tarfile(data)
    assert entries(data) == expected
    assert entries(data, step=7, chunk=1000) == expected  # short reads from the source, small buffers
    names = [name for name, *_ in expected]
    if fmt != "ustar":
        assert any(len(name) > 300 for name in names)  # the long name really went through L or pax
    assert any(name.startswith("d" * 90 + "/") for name in names)  # the ustar prefix field


def test_pax_global_header_and_size_record() -> None:
    data = build(tarfile.PAX_FORMAT, pax_headers={"comment": "global record"})
    assert data[156:157] == b"g"
    assert entries(data) == by_tarfile(data)
    # a pax size record overrides the header's size field (how sizes of 8 GiB and more are written)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sized")
        info.size = 3
        info.pax_headers = {"size": "3"}
        tar.addfile(info, io.BytesIO(b"abc"))
    assert [(m[0], m[2], m[4]) for m in entries(buffer.getvalue())] == [("sized", 3, b"abc")]


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def test_gnu_base256_size() -> None:
    info = tarfile.TarInfo("big")
    info.size = 1000
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (1000).to_bytes(11, "big")  # what GNU tar writes for sizes of 8 GiB and more
    data = _with_checksum(header) + b"x" * 1000 + bytes(-1000 % BLOCK) + bytes(2 * BLOCK)
    assert [(m[0], m[2]) for m in entries(data)] == [("big", 1000)]


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_compressed_tars(kind: str) -> None:
    data = build(tarfile.GNU_FORMAT, mode=f"w:{kind}")
    assert entries(data, step=333) == by_tarfile(data)


def test_a_name_that_looks_like_a_magic_number_is_still_a_tar() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("BZh91AY&SY")  # starts like a bzip2 stream
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    assert [(m[0], m[4]) for m in entries(buffer.getvalue())] == [("BZh91AY&SY", b"ok")]


def test_truncated_compressed_tar_is_cut_off() -> None:
    data = build(tarfile.GNU_FORMAT, mode="w:gz")
    with pytest.raises(TarCutOff):
        entries(data[: len(data) // 2])
    corrupt = data[:20] + bytes(len(data) - 40) + data[-20:]
    with pytest.raises(TarFormatError, match="corrupt"):
        entries(corrupt)


def test_a_compressed_tar_must_end_whole_after_its_end_blocks() -> None:
    """The tar ends at its end-of-archive blocks, but its compressed stream must end whole too: a
    gzip trailer that does not match (or damaged data that still decodes to zero blocks, which isal
    lets through more often than zlib) is corrupt, not a clean end."""
    data = bytearray(build(tarfile.GNU_FORMAT, mode="w:gz", big=False))
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32
    with pytest.raises(TarFormatError, match="corrupt"):
        entries(bytes(data))


def test_every_cut_is_either_cut_off_or_a_clean_member_boundary() -> None:
    data = build(tarfile.GNU_FORMAT, big=False)
    full = entries(data)
    ends = {0}  # where a member (its long-name headers included) ends and the next may start
    stream = TarStream(Trickle(data))
    for member in stream:
        ends.add(member.offset + BLOCK + member.size + (-member.size % BLOCK))
    end_blocks = max(ends)
    for cut in range(len(data) + 1):
        try:
            got = entries(data[:cut])
        except TarCutOff:
            assert cut not in ends, f"a cut at the member boundary {cut} was reported as cut off"
            assert cut < end_blocks + BLOCK  # a part of the first end block is cut off too
            continue
        assert cut in ends or cut >= end_blocks + BLOCK, f"a cut at {cut} went unnoticed"
        assert got == full[: len(got)]
        assert len(got) == len(full) or cut < end_blocks


def test_padding_cut_is_cut_off() -> None:
    data = build(tarfile.GNU_FORMAT)
    stream = TarStream(Trickle(data))
    member = next(m for m in stream if m.name == "folder/file1")
    data_end = member.offset + BLOCK + 1
    for cut in (data_end, data_end + 100, data_end + 510):  # the data is whole, its padding is not
        with pytest.raises(TarCutOff):
            entries(data[:cut])


def test_bad_checksum_and_noise() -> None:
    data = bytearray(build(tarfile.GNU_FORMAT))
    data[0] ^= 0x01  # the first header's name changes, its checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        entries(bytes(data))
    with pytest.raises(TarFormatError):
        entries(os.urandom(4096))
    assert not header_ok(os.urandom(BLOCK))
    assert not header_ok(b"short")
    later = bytearray(build(tarfile.GNU_FORMAT))
    third = [m.offset for m in TarStream(Trickle(bytes(later)))][2]
    later[third + 5] ^= 0x01  # a header further on
    assert header_ok(bytes(later[:BLOCK]))
    with pytest.raises(TarFormatError, match="checksum"):
        entries(bytes(later))


def test_empty_stream_and_end_blocks() -> None:
    assert entries(b"") == []
    assert entries(bytes(2 * BLOCK)) == []
    with pytest.raises(TarCutOff):
        entries(bytes(100))


def test_unread_data_is_skipped_and_read_is_bounded() -> None:
    data = build(tarfile.GNU_FORMAT)
    stream = open_tar(Trickle(data, step=1000))
    seen: list[TarMember] = []
    for member in stream:
        seen.append(member)
        if member.name == "folder/file100000":
            assert len(stream.read(10)) == 10
            assert stream.left == 100_000 - 10
    assert [m.name for m in seen] == [name for name, *_ in by_tarfile(data)]
    assert stream.next() is None


def test_sparse_members_are_refused() -> None:
    info = tarfile.TarInfo("sparse")
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = b"S"
    with pytest.raises(TarFormatError, match="sparse"):
        entries(_with_checksum(header) + bytes(2 * BLOCK))


def test_tar_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    path.write_bytes(build(tarfile.PAX_FORMAT))
    with open(path, "rb") as handle:
        names = [m.name for m in open_tar(handle)]
    assert names == [name for name, *_ in by_tarfile(path.read_bytes())]
