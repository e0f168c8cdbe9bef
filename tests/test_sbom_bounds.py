"""Issue 14, the SBOM scanner against hostile layers: zip bombs and other bounded jars, paths that
are not UTF-8, and caps that drop data said out loud (in every format, on stderr, from the cache).

Every hostile input is built here with plain zipfile/struct/tarfile, independently of the scanner.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from cache.sbom import ImageSbom, image_sbom, render
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from cli.main import main
from tests.test_sbom_support import by_name, image_in_store, tar_with

STATUS = b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2-1\n\n"
EOCD = struct.Struct("<4s4H2LH")
LOCAL = struct.Struct("<4s5H3L2H")
CENTRAL = struct.Struct("<4s6H3L5H2L")


def pom(artifact: str, version: str, group: str = "org.example") -> bytes:
    return f"groupId={group}\nartifactId={artifact}\nversion={version}\n".encode()


def jar(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def pom_jar(artifact: str, version: str, extra: dict[str, bytes] | None = None) -> bytes:
    return jar({f"META-INF/maven/org.example/{artifact}/pom.properties": pom(artifact, version), **(extra or {})})


def central_directory(data: bytes) -> tuple[int, int]:
    """(offset of the central directory, offset of the end record) of a zip written by zipfile."""
    end = data.rindex(b"PK\x05\x06")
    return EOCD.unpack_from(data, end)[6], end


def with_extra_records(data: bytes, copies: int) -> bytes:
    """The zip with its first central directory record repeated ``copies`` more times: every copy
    names the same local header, so one compressed entry is listed (and inflated) over and over."""
    start, end = central_directory(data)
    name, extra, comment = CENTRAL.unpack_from(data, start)[10:13]
    first = data[start:start + CENTRAL.size + name + extra + comment]
    records = first * (copies + 1) + data[start + len(first):end]
    count = EOCD.unpack_from(data, end)[4] + copies
    if count > 0xFFFF:
        count = 0xFFFF  # zipfile reads records by the directory's size, not this count
    return data[:start] + records + EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(records), start, 0)


def bomb_jar(copies: int = 2000, size: int = 120 << 20) -> bytes:
    """The issue's jar: 2,000 directory entries all pointing at one 120 MiB deflated entry, plus one
    honest pom.properties after it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("lib/kernel.jar", "w") as kernel:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                kernel.write(chunk)
        archive.writestr("META-INF/maven/org.example/bomb/pom.properties", pom("bomb", "6.6.6"))
    return with_extra_records(buffer.getvalue(), copies - 1)


def raw_zip(entries: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of already-deflated entries (name, deflated bytes, crc, size): no recompression per copy."""
    body, records = b"", b""
    for name, deflated, crc, size in entries:
        encoded = name.encode()
        records += CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(deflated), size, len(encoded), 0, 0,
                                0, 0, 0, len(body)) + encoded
        body += LOCAL.pack(b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated), size, len(encoded), 0)
        body += encoded + deflated
    end = EOCD.pack(b"PK\x05\x06", 0, 0, len(entries), len(entries), len(records), len(body), 0)
    return body + records + end


def zeros_deflated(size: int) -> tuple[bytes, int]:
    squeeze = zlib.compressobj(6, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [squeeze.compress(chunk) for _ in range(size >> 20)]
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return b"".join([*parts, squeeze.flush()]), crc


def documents(sbom: ImageSbom, tmp_path: Path) -> dict[str, Any]:
    """All three formats, each checked by its reference validator."""
    spdx_path = tmp_path / "sbom.spdx.json"
    spdx_path.write_text(render(sbom, "spdx-json"), encoding="utf-8")
    messages = validate_full_spdx_document(parse_file(str(spdx_path)), "SPDX-2.3")
    assert messages == [], [m.validation_message for m in messages]
    cyclonedx = render(sbom, "cyclonedx-json")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(cyclonedx) is None
    return {"spdx": json.loads(spdx_path.read_text(encoding="utf-8")), "cyclonedx": json.loads(cyclonedx),
            "json": json.loads(render(sbom, "json"))}


def warnings_in(docs: dict[str, Any]) -> dict[str, list[str]]:
    """Each format's warnings: SPDX's creator comment lines, CycloneDX metadata properties, native list."""
    comment = docs["spdx"]["creationInfo"].get("comment", "")
    return {
        "spdx": [line for line in comment.splitlines()[1:]],
        "cyclonedx": [p["value"] for p in docs["cyclonedx"]["metadata"].get("properties", [])
                      if p["name"].startswith("layerhoard:warning")],
        "json": list(docs["json"].get("warnings", [])),
    }


def test_zip_bomb_jar_with_overlapping_entries_is_skipped_fast_and_stated(store: BlobStore, tmp_path: Path) -> None:
    layer = tar_with({"opt/app/bomb.jar": bomb_jar(), "opt/app/lib/good-1.0.jar": pom_jar("good", "1.0"),
                      "var/lib/dpkg/status": STATUS})
    image = image_in_store(store, tmp_path / "layout", [layer], "test/bomb:1")
    tracemalloc.start()
    started = time.monotonic()
    try:
        sbom = image_sbom(image)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 5, seconds
    assert peak < 32 << 20, peak  # the kernel inflates to 120 MiB: it was never inflated at all
    java = by_name(sbom, "java-archive")
    assert {"good", "bomb"} <= set(java)  # the honest entries, even of the bomb itself, are still read
    assert "bash" in by_name(sbom, "deb")
    warning = warning_for(sbom, "/opt/app/bomb.jar")
    assert "2000 skipped: entries whose bytes overlap another entry's" in warning
    for found in warnings_in(documents(sbom, tmp_path)).values():
        assert warning in found


def test_nested_jars_are_bounded_by_depth_entry_size_total_and_count(store: BlobStore, tmp_path: Path) -> None:
    nested = pom_jar("level5", "5")
    for level in range(4, -1, -1):  # level0.jar holds level1.jar holds ... level5.jar
        nested = pom_jar(f"level{level}", str(level), {f"lib/level{level + 1}.jar": nested})
    zeros, crc = zeros_deflated(60 << 20)
    # five different 60 MiB entries: each under the one-entry cap, together over the archive's total
    heavy = raw_zip([(f"lib/heavy{n}.jar", zeros, crc, 60 << 20) for n in range(5)])
    crowded = with_extra_records(pom_jar("crowded", "1"), 200_001)
    corrupt = bytearray(jar({"META-INF/maven/org.example/corrupt/pom.properties": pom("corrupt", "1")},
                            zipfile.ZIP_STORED))
    corrupt[corrupt.index(b"artifactId=corrupt")] ^= 1  # pom.properties fails its CRC when read
    layer = tar_with({"opt/nested.jar": nested, "opt/heavy.jar": heavy, "opt/crowded.jar": crowded,
                      "opt/corrupt-1.0.jar": bytes(corrupt), "opt/fine-2.0.jar": pom_jar("fine", "2.0")})
    image = image_in_store(store, tmp_path / "layout", [layer], "test/nested:1", compression="zstd")
    started = time.monotonic()
    sbom = image_sbom(image)
    assert time.monotonic() - started < 10
    java = by_name(sbom, "java-archive")
    assert {"level0", "level1", "level2", "level3", "fine"} <= set(java)
    assert not {"level4", "level5", "crowded"} & set(java)
    assert "1 skipped: archive nested deeper than 3" in warning_for(sbom, "/opt/nested.jar")
    assert "1 skipped: entry over the 268435456 bytes" in warning_for(sbom, "/opt/heavy.jar")
    assert "1 skipped: archive with more than 200000 entries" in warning_for(sbom, "/opt/crowded.jar")
    assert "1 skipped: unreadable entry (BadZipFile)" in warning_for(sbom, "/opt/corrupt-1.0.jar")


def warning_for(sbom: ImageSbom, path: str) -> str:
    [warning] = [w for w in sbom.warnings if w.startswith(f"{path} in layer sha256:")]
    return warning


def gnu_tar(files: dict[bytes, bytes]) -> bytes:
    """A layer tar whose names are raw bytes (GNU format: no pax UTF-8 header to tidy them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_paths_and_names_that_are_not_utf8_give_valid_documents(store: BlobStore, tmp_path: Path) -> None:
    layer = gnu_tar({
        b"usr/lib/python3/site-packages/bad\xff-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: bad\nVersion: 1.0\nLicense: MIT\n",
        # JSON escapes make lone surrogates out of pure ASCII bytes
        b"app/node_modules/odd/package.json": b'{"name": "odd\\ud800", "version": "1.0\\udcff", "license": "X\\udfff"}',
        b"opt/\xfe\xfe/lib-2.0.jar": pom_jar("lib", "2.0"),
        b"var/lib/dpkg/status": STATUS,
    })
    image = image_in_store(store, tmp_path / "layout", [layer], "test/bytes:1")
    sbom = image_sbom(image)
    docs = documents(sbom, tmp_path)  # each validated: a surrogate reaching the JSON fails here
    python = by_name(sbom, "python")["bad"]
    assert python.locations == ["usr/lib/python3/site-packages/bad\\xff-1.0.dist-info/METADATA"]
    assert by_name(sbom, "npm")["odd\\ud800"].version == "1.0\\xff"
    assert by_name(sbom, "java-archive")["lib"].locations == ["opt/\\xfe\\xfe/lib-2.0.jar"]
    spdx_python = next(p for p in docs["spdx"]["packages"] if p["name"] == "bad")
    assert "bad\\xff-1.0.dist-info" in spdx_python["sourceInfo"]
    assert any(a["name"] == "bad" for a in docs["json"]["artifacts"])
    for format_name in ("spdx-json", "cyclonedx-json", "json"):
        result = CliRunner().invoke(main, ["--cache-dir", str(store.root), "sbom", image.ref,
                                           "--format", format_name])
        assert result.exit_code == 0, result.output
        assert json.dumps("bad\\xff-1.0.dist-info")[1:-1] in result.stdout  # the backslash escaped once more in JSON


def dpkg_status(count: int, description_bytes: int = 0) -> bytes:
    description = "".join(f" line {n} of a long description {'x' * 60}\n"
                          for n in range(description_bytes // 90))
    return "".join(f"Package: pkg{n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.{n}\n"
                   f"Description: package {n}\n{description}\n" for n in range(count)).encode()


def test_dpkg_status_bigger_than_any_real_one_is_read_as_a_stream(store: BlobStore, tmp_path: Path) -> None:
    status = dpkg_status(700, 100 << 10)
    assert len(status) > 64 << 20  # the old whole-file cap gave "0 packages" and said nothing
    layer = tar_with({"var/lib/dpkg/status": status})
    sbom = image_sbom(image_in_store(store, tmp_path / "layout", [layer], "test/dpkg:1", compression="zstd"))
    assert len(by_name(sbom, "deb")) == 700
    assert sbom.warnings == []


def test_dpkg_package_cap_keeps_what_was_read_and_says_so(store: BlobStore, tmp_path: Path) -> None:
    layer = tar_with({"var/lib/dpkg/status": dpkg_status(100_003)})
    sbom = image_sbom(image_in_store(store, tmp_path / "layout", [layer], "test/many:1", compression="zstd"))
    assert len(by_name(sbom, "deb")) == 100_000
    [warning] = sbom.warnings
    assert warning.startswith("/var/lib/dpkg/status in layer sha256:") and "100000 packages" in warning


def test_caps_are_stated_in_every_format_on_stderr_and_from_the_cache(store: BlobStore, tmp_path: Path) -> None:
    big = b'{"name": "big", "version": "1.0", "description": "' + b"x" * (4 << 20) + b'"}'
    layers = [
        tar_with({"var/lib/dpkg/status": STATUS, "etc/os-release": b"ID=debian\nVERSION_ID=12\n"}),
        tar_with({"app/node_modules/big/package.json": big,
                  "app/node_modules/ms/package.json": b'{"name": "ms", "version": "2.1.3"}'}),
    ]
    image = image_in_store(store, tmp_path / "layout", layers, "test/capped:1")
    first = image_sbom(image)
    [warning] = first.warnings
    assert warning.startswith("/app/node_modules/big/package.json in layer sha256:")
    assert "over the 4194304 byte cap" in warning
    assert {p.name for p in first.packages} == {"bash", "ms"}
    again = image_sbom(load_image(store, image.ref))
    assert (again.layers_scanned, again.warnings) == (0, first.warnings)  # the layer record keeps it
    for found in warnings_in(documents(again, tmp_path)).values():
        assert found == [warning]
    result = CliRunner().invoke(main, ["--cache-dir", str(store.root), "sbom", image.ref, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count(warning) == 1
    assert f"layerhoard: warning: {warning}\n" in result.stderr


def test_tar_entries_skipped_by_the_scan_are_warnings(store: BlobStore, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("../escape/var/lib/dpkg/status", "var/lib/dpkg/status"):
            info = tarfile.TarInfo(name)
            info.size = len(STATUS)
            tar.addfile(info, io.BytesIO(STATUS))
    sbom = image_sbom(image_in_store(store, tmp_path / "layout", [buffer.getvalue()], "test/climb:1"))
    assert "bash" in by_name(sbom, "deb")
    assert any("../escape/var/lib/dpkg/status" in w and "climbs out" in w for w in sbom.warnings)
