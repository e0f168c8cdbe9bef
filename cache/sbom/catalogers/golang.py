"""Go binaries: the module build info the Go linker embeds (Go 1.18+ inline format).

The ``.go.buildinfo`` section starts with the magic ``\\xff Go buildinf:``; section headers sit at
the end of an ELF file, which a tar stream reaches last, so the file is scanned for the magic as
it streams past, with a small overlap between chunks, instead of being held or seeked.
"""

from __future__ import annotations

from cache.sbom.catalogers.base import Found, Json, Reader

MAGIC = b"\xff Go buildinf:"
HEADER = 32
FLAG_INLINE = 0x2
CHUNK = 1 << 20
TAIL_LIMIT = 1 << 20  # version + module info after the header; real ones are a few KiB
MIN_SIZE = 4096


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError("bad varint in Go build info")


def _find_magic(stream: Reader) -> bytes | None:
    """Bytes from the magic on (at most HEADER + TAIL_LIMIT), or None if the file has none."""
    carry = b""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return None
        data = carry + chunk
        at = data.find(MAGIC)
        if at >= 0:
            found = data[at:]
            while len(found) < HEADER + TAIL_LIMIT:
                more = stream.read(HEADER + TAIL_LIMIT - len(found))
                if not more:
                    break
                found += more
            return found
        carry = data[-(len(MAGIC) - 1):]


def parse_buildinfo(blob: bytes) -> Json:
    if len(blob) < HEADER:
        return {"error": "truncated Go build info"}
    if not blob[15] & FLAG_INLINE:
        return {"error": "Go build info before Go 1.18 (pointer format) is not read"}
    at = HEADER
    strings = []
    for _ in range(2):
        length, at = _uvarint(blob, at)
        strings.append(blob[at:at + length].decode("utf-8", errors="replace"))
        at += length
    version, modinfo = strings
    cut = at > len(blob)
    if len(modinfo) >= 33 and (modinfo[-17] == "\n" or cut):
        modinfo = modinfo[16:-16]  # the sentinels around the text (cut short: the end is a partial line anyway)
    record = {"go_version": version, **parse_modinfo(modinfo)}
    if cut:
        record["warnings"] = [f"build info over {TAIL_LIMIT} bytes: the modules after that were not read"]
    return record


def parse_modinfo(text: str) -> dict[str, object]:
    main: list[str] = []
    deps: list[list[str]] = []
    settings: dict[str, str] = {}
    path = ""
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "path" and len(fields) > 1:
            path = fields[1]
        elif fields[0] == "mod" and len(fields) > 2:
            main = fields[1:4]
        elif fields[0] == "dep" and len(fields) > 2:
            deps.append(fields[1:4])
        elif fields[0] == "=>" and len(fields) > 2 and deps:
            deps[-1] = fields[1:4]  # a replace directive: the replacement is what was built in
        elif fields[0] == "build" and len(fields) > 1 and "=" in fields[1]:
            key, _, value = fields[1].partition("=")
            if key in ("GOOS", "GOARCH", "GOAMD64", "-buildmode", "CGO_ENABLED", "vcs.revision"):
                settings[key] = value
    return {"path": path, "main": main, "deps": deps, "settings": settings}


class GoBinaryCataloger:
    name = "go-binary"
    package_type = "go-module"

    def wants(self, path: str, mode: int, size: int) -> bool:
        return size >= MIN_SIZE and (mode & 0o111 != 0 or ".so" in path.rsplit("/", 1)[-1])

    def read(self, path: str, stream: Reader, size: int) -> Json | None:
        if stream.read(4) != b"\x7fELF":
            return None
        blob = _find_magic(stream)
        if blob is None:
            return None
        try:
            return parse_buildinfo(blob)
        except (ValueError, IndexError) as error:
            return {"error": str(error)}

    def packages(self, path: str, record: Json) -> list[Found]:
        arch = record.get("settings", {}).get("GOARCH", "")
        found: list[Found] = []
        main = record.get("main") or []
        if main and main[0]:
            found.append(Found(main[0], main[1] if len(main) > 1 else "(devel)", {"arch": arch, "main": True}))
        for dep in record.get("deps", []):
            if dep and dep[0]:
                version, h1 = [*dep[1:3], "", ""][:2]
                found.append(Found(dep[0], version, {"arch": arch, "h1": h1}))
        go = str(record.get("go_version", ""))
        if go.startswith("go"):
            found.append(Found("stdlib", go[2:].split(" ")[0], {"arch": arch}))
        return found
