"""docker-archive imports of hostile tarballs: memory and time stay bounded whatever the tar holds.

Each attack tar is a good `docker save` (tests/savetars.py) with extra members written in front:
large JSON members (sparse on disk, so cheap to make), a great many empty members, a run of pax
headers. Peak memory is the child's own ``ru_maxrss`` from ``wait4``.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import cache
from cache.formats.docker_save import LayerChooser, SaveReader
from cache.formats.tar import header_ok
from cache.store.blobstore import BlobStore
from tests.images import random_layer
from tests.savetars import SaveTar, write_save_tar
from tests.test_dockersave import PipeOnly

SOURCE_ROOT = Path(cache.__file__).parent.parent  # the tree under test, for the child's PYTHONPATH


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float


# A child's ru_maxrss starts at the high-water mark of the memory it was forked with: pytest's,
# for a child of this process. A small Python forks the measured one and reports its peak instead.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def pull(cache_dir: Path, target: str, stdin: Path | None = None) -> Run:
    """``layerhoard pull docker-archive:TARGET`` in a child process, with its peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    peak = cache_dir.parent / f"{cache_dir.name}.peak"
    command = ["-m", "cli.main", "--cache-dir", str(cache_dir), "pull", f"docker-archive:{target}"]
    with open(stdin or os.devnull, "rb") as source:
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-c", _MEASURE, str(peak), *command], stdin=source,
                             capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    return Run(run.returncode, run.stdout, run.stderr, int(peak.read_text()) / 1024, seconds)


def good_save(folder: Path) -> SaveTar:
    return write_save_tar(folder / "good.tar", [random_layer(300_000, 61), random_layer(2000, 62)], "legacy")


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.USTAR_FORMAT)


def json_members_then(good: Path, out: Path, count: int, size: int) -> None:
    """``count`` top-level JSON members of ``size`` bytes (holes: no disk, no time), then ``good``."""
    with open(out, "wb") as tar:
        for i in range(count):
            tar.write(header(f"junk{i:02d}.json", size))
            tar.seek(size + -size % 512, os.SEEK_CUR)
        tar.write(good.read_bytes())


def empty_members_then(good: Path, out: Path, count: int) -> None:
    """``count`` empty members with distinct names, then ``good``. The names are permutations of one
    set of letters, so every header has the same checksum: one template, no tarfile per member."""
    template = bytearray(header("abcdefghij"))
    names = itertools.permutations(b"abcdefghij")
    with open(out, "wb") as tar:
        for first in range(0, count, 1 << 16):
            chunk = []
            for name in itertools.islice(names, min(1 << 16, count - first)):
                template[:10] = bytes(name)
                chunk.append(bytes(template))
            tar.write(b"".join(chunk))
        tar.write(good.read_bytes())


def test_large_json_members_of_an_archive_file_are_never_read(tmp_path: Path) -> None:
    good = good_save(tmp_path)
    json_members_then(good.path, tmp_path / "json.tar", 30, 60_000_000)
    run = pull(tmp_path / "cache", str(tmp_path / "json.tar"))
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("docker-archive:docker.io/library/app:1 ")
    assert run.peak_mb < 150, f"peak RSS {run.peak_mb:.0f} MB"  # before: 1.9 GB


def test_large_json_members_on_stdin_are_refused_past_the_budget(tmp_path: Path) -> None:
    good = good_save(tmp_path)
    json_members_then(good.path, tmp_path / "json.tar", 30, 60_000_000)
    run = pull(tmp_path / "cache", "-", stdin=tmp_path / "json.tar")
    assert run.code == 1
    assert run.stderr.strip().splitlines() == [
        "layerhoard: error: docker-archive -: its JSON members add up to more than 128 MiB "
        "(before manifest.json, or named by it), far more than a docker save holds; refused"
    ]
    assert run.peak_mb < 300, f"peak RSS {run.peak_mb:.0f} MB"
    assert not os.listdir(tmp_path / "cache" / "ingest") and not os.listdir(tmp_path / "cache" / "blobs" / "sha256")


def test_a_million_members_are_refused_early(tmp_path: Path) -> None:
    good = good_save(tmp_path)
    many = tmp_path / "million.tar"
    try:
        empty_members_then(good.path, many, 1_000_000)
        run = pull(tmp_path / "cache", str(many))
    finally:
        many.unlink()  # 512 MB of headers: not left behind in pytest's kept tmp folders
    assert run.code == 1
    assert run.stderr.strip().splitlines() == [
        f"layerhoard: error: docker-archive {many} has more than 100000 tar members, far more than a docker save "
        "has; refused"
    ]
    assert run.peak_mb < 100, f"peak RSS {run.peak_mb:.0f} MB"  # before: 567 MB, 48 s, and imported
    assert run.seconds < 10


def test_members_below_the_cap_cost_no_memory_each(tmp_path: Path) -> None:
    good = good_save(tmp_path)
    empty_members_then(good.path, tmp_path / "many.tar", 99_000)
    alone = pull(tmp_path / "alone", str(good.path))
    crowded = pull(tmp_path / "cache", str(tmp_path / "many.tar"))
    assert alone.code == 0 and crowded.code == 0, crowded.stderr
    # What remains per member is a name kept for error messages (bounded by the cap): about
    # 10 MB here. tarfile's first look held one TarInfo per member: 52 MB more.
    assert crowded.peak_mb - alone.peak_mb < 25, f"{alone.peak_mb:.0f} MB alone, {crowded.peak_mb:.0f} MB crowded"


def test_a_run_of_pax_headers_holds_nothing(tmp_path: Path) -> None:
    good = good_save(tmp_path)
    with open(tmp_path / "pax.tar", "wb") as tar:
        for run in range(20):  # each just under 1 MiB of records with keys never seen before
            records = b"".join(b"16 k%02d%07d=v\n" % (run, i) for i in range(58_000))
            tar.write(header("././@PaxHeader", len(records), tarfile.XHDTYPE) + records + bytes(-len(records) % 512))
        tar.write(header("junk") + good.path.read_bytes())
    run = pull(tmp_path / "cache", str(tmp_path / "pax.tar"))
    assert run.code == 1
    assert "tar extended headers of more than 1048576 bytes" in run.stderr
    assert run.peak_mb < 100, f"peak RSS {run.peak_mb:.0f} MB"


def test_the_stream_keeps_only_what_manifest_json_names(store: BlobStore, tmp_path: Path) -> None:
    """The daemon's save stream and stdin: JSON before manifest.json is dropped once it arrives,
    JSON after it is skipped unread; legacy folders' json and VERSION are never kept."""
    good = good_save(tmp_path)
    data = io.BytesIO()
    with tarfile.open(good.path) as source, tarfile.open(fileobj=data, mode="w") as out:
        extra = tarfile.TarInfo("aaa.json")
        extra.size = 2
        out.addfile(extra, io.BytesIO(b"{}"))
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        extra.name = "zzz.json"
        out.addfile(extra, io.BytesIO(b"{}"))
    contents = SaveReader(store, LayerChooser(store), what="stream").read(PipeOnly(data.getvalue()))
    try:
        assert set(contents.files) == {"manifest.json", f"{good.image_id[7:]}.json"}
    finally:
        contents.discard()


def test_signed_and_unsigned_header_checksums() -> None:
    """Guards the faster checksum: both forms tarfile accepts, with bytes above 127 in the name."""
    block = bytearray(header("é" * 10 + "x" * 40))
    block[148:156] = b" " * 8
    unsigned, signed = sum(block), sum(b - 256 if b > 127 else b for b in block)
    assert signed != unsigned and signed > 0
    for value in (unsigned, signed):
        block[148:156] = b"%06o\x00 " % (value & 0o777777)
        assert header_ok(bytes(block))
    block[148:156] = b"%06o\x00 " % (unsigned + 256)
    assert not header_ok(bytes(block))
