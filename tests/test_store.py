"""BlobStore: the invariants of design.md, proven with real processes, real kills and skopeo.

1. a blob file holds exactly the bytes its name says, read-only;
2. publishing goes through ingest/, and a wrong digest or size stores nothing;
3. one transfer per digest across processes (lock, look again, fetch);
5. verify finds a flipped byte, moves it aside, and it is never served again;
and index.json is replaced atomically, the folder is an OCI layout that skopeo reads.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import blake3
import pytest

from cache.errors import BlobNotFound, DigestMismatch, SizeMismatch
from cache.formats.index_json import REF_NAME
from cache.model.digest import Digest, hash_file, parse_digest, sha256_of
from cache.model.manifests import parse_manifest_or_index
from cache.store.blobstore import LAYOUT_VERSION, BlobStore
from cache.store.images import load_image, record_image
from cache.upkeep.gc import gc
from tests.images import TestImage as BuiltImage  # aliased so pytest does not collect it
from tests.images import build_image, random_layer
from tests.services import skopeo

REPO_ROOT = Path(__file__).resolve().parent.parent
FORK = multiprocessing.get_context("fork")
# A child forked while this process holds a flock inherits the locked descriptor and would wait on
# itself forever, so a test that forks under a held lock starts its child fresh instead.
SPAWN = multiprocessing.get_context("spawn")


def blob_files(store: BlobStore) -> list[Path]:
    return sorted(store.blobs_dir.iterdir())


def ingest_files(store: BlobStore) -> list[Path]:
    return sorted(store.ingest_dir.iterdir())


def digest_locks(store: BlobStore) -> list[Path]:
    return sorted(store.locks_dir.glob("sha256-*"))


def assert_blobs_sound(store: BlobStore) -> None:
    """Invariant 1: every name in blobs/ is the sha256 of its bytes, and the file is read-only."""
    for path in blob_files(store):
        assert hash_file(str(path)) == path.name, f"{path.name} holds other bytes"
        assert stat.S_IMODE(path.stat().st_mode) == 0o444


def slow_chunks(data: bytes, chunk: int, delay: float) -> Iterator[bytes]:
    for start in range(0, len(data), chunk):
        time.sleep(delay)
        yield data[start:start + chunk]


# -- layout and publishing -------------------------------------------------------------------


def test_fresh_store_is_an_empty_oci_layout(store: BlobStore) -> None:
    assert json.loads((store.root / "oci-layout").read_bytes()) == LAYOUT_VERSION == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(store.index_path.read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    for folder in ("blobs/sha256", "ingest", "locks"):
        assert (store.root / folder).is_dir()


def test_ingest_publishes_read_only_blob_and_records_it(store: BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = sha256_of(data)
    assert store.ingest(digest, slow_chunks(data, 1 << 20, 0), len(data), "application/octet-stream", "test") is True
    path = store.path(digest)
    assert path == store.root / "blobs" / "sha256" / digest.hex
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has(digest) and store.size(digest) == len(data)
    with store.open(digest) as handle:
        assert handle.read() == data
    record = store.index.blob(digest)
    assert record is not None and record["size"] == len(data) and record["source"] == "test"
    assert ingest_files(store) == []
    # Stored already: no second write, the source is not even read.
    assert store.ingest(digest, iter([b"never read"]), len(data)) is False
    assert list(store.digests()) == [digest]


def test_put_bytes_and_ingest_unknown_deduplicate(store: BlobStore) -> None:
    digest = store.put_bytes(b'{"config": true}')
    assert digest == sha256_of(b'{"config": true}') and store.read_bytes(digest) == b'{"config": true}'
    data = os.urandom(100_000)
    first = store.ingest_unknown(iter([data[:500], data[500:]]))
    assert first == (sha256_of(data), len(data), True)
    assert store.ingest_unknown(iter([data])) == (sha256_of(data), len(data), False)
    assert ingest_files(store) == []
    assert_blobs_sound(store)


def test_foreign_file_in_blobs_is_ignored(store: BlobStore) -> None:
    (store.blobs_dir / "not-a-digest").write_bytes(b"x")
    (store.blobs_dir / ("A" * 64)).write_bytes(b"x")
    assert list(store.digests()) == []


def test_interrupted_writer_resumes_from_its_offset(store: BlobStore) -> None:
    data = os.urandom(300_000)
    digest = sha256_of(data)
    with pytest.raises(ConnectionError):
        with store.writer(digest, len(data), resume=True) as writer:
            assert writer is not None
            writer.write(data[:120_000])
            raise ConnectionError("source went away")
    assert not store.has(digest) and len(ingest_files(store)) == 1
    with store.writer(digest, len(data), resume=True) as writer:
        assert writer is not None and writer.offset == 120_000
        writer.write(data[120_000:])
        writer.commit()
    assert store.read_bytes(digest) == data and ingest_files(store) == []


def _ingest_over_read_only_leftover(root: str) -> None:
    os.setgid(65534)
    os.setuid(65534)  # nobody: unlike root, it cannot open a read-only file for writing
    store = BlobStore(root)
    digest = sha256_of(b"after the kill")
    leftover = store.ingest_dir / f"sha256-{digest.hex}"
    leftover.write_bytes(b"after the k")
    leftover.chmod(0o444)  # as a writer killed between chmod and link in _publish leaves it
    store.ingest(digest, iter([b"after the kill"]))
    assert store.read_bytes(digest) == b"after the kill"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_read_only_ingest_leftover_does_not_block_the_next_ingest() -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o777)
        child = FORK.Process(target=_ingest_over_read_only_leftover, args=(f"{folder}/cache",), daemon=True)
        child.start()
        child.join(30)
        assert child.exitcode == 0


def test_write_behind_keeps_reused_buffers_and_large_blobs_whole(store: BlobStore) -> None:
    """Writes finish on a second thread after write() returns: a caller may reuse its buffer at once."""
    threads = threading.active_count()
    buffer = bytearray(os.urandom(1 << 20))
    chunks = []
    for n in range(40):  # 40 MiB: past the 32 MiB point where writeback is started early
        buffer[:8] = n.to_bytes(8, "big")
        chunks.append(bytes(buffer))
    expected = b"".join(chunks)
    digest = sha256_of(expected)
    with store.writer(digest, len(expected)) as writer:
        assert writer is not None
        for n in range(40):
            buffer[:8] = n.to_bytes(8, "big")
            writer.write(memoryview(buffer))  # a writable view: the writer must copy it
            writer.write(memoryview(buffer)[:0])
        writer.commit()
    assert store.read_bytes(digest) == expected
    assert store.index.blob(digest)["blake3"] == blake3.blake3(expected).hexdigest()  # type: ignore[index]
    assert threading.active_count() == threads  # the write thread is gone
    assert store.ingest(digest, iter([b"unread"])) is False and threading.active_count() == threads


def test_delete_removes_blob_and_record(store: BlobStore) -> None:
    digest = store.put_bytes(b"gone soon")
    assert store.delete(digest) is True
    assert not store.has(digest) and store.index.blob(digest) is None
    assert store.delete(digest) is False


# -- untrusted bytes: wrong digest, wrong size -----------------------------------------------


def assert_nothing_stored(store: BlobStore, digest: Digest) -> None:
    assert blob_files(store) == []
    assert ingest_files(store) == []
    assert store.index.blob(digest) is None
    with pytest.raises(BlobNotFound):
        store.open(digest)


def test_wrong_digest_is_rejected_and_nothing_stored(store: BlobStore) -> None:
    claimed = sha256_of(b"what the manifest promised")
    with pytest.raises(DigestMismatch) as caught:
        store.ingest(claimed, iter([b"what the registry ", b"sent"]), source="test")
    message = str(caught.value)
    assert str(claimed) in message and str(sha256_of(b"what the registry sent")) in message and "\n" not in message
    assert_nothing_stored(store, claimed)


@pytest.mark.parametrize("delta", [-1, +1], ids=["short", "long"])
def test_wrong_size_is_rejected_and_nothing_stored(store: BlobStore, delta: int) -> None:
    data = os.urandom(50_000)
    digest = sha256_of(data)
    with pytest.raises(SizeMismatch, match=f"blob {digest}: .*{len(data) + delta}"):
        store.ingest(digest, slow_chunks(data, 8192, 0), size=len(data) + delta)
    assert_nothing_stored(store, digest)


def test_failed_commit_of_a_writer_drops_its_bytes(store: BlobStore) -> None:
    digest = sha256_of(b"right")
    with pytest.raises(DigestMismatch):
        with store.writer(digest, 5) as writer:
            assert writer is not None
            writer.write(b"wrong")
            writer.commit()
    assert_nothing_stored(store, digest)


# -- invariant 3: one transfer per digest across processes -----------------------------------


def _race(root: str, data: bytes, barrier: Barrier, results: Any) -> None:
    """One of the racing processes: ingest ``data``, reporting whether the source was read."""
    store = BlobStore(root)
    digest = sha256_of(data)
    read_at: list[float] = []

    def source() -> Iterator[bytes]:
        read_at.append(time.monotonic())
        yield from slow_chunks(data, 256 * 1024, 0.02)

    barrier.wait()
    written = store.ingest(digest, source(), len(data))
    results.put((os.getpid(), written, read_at[0] if read_at else None, time.monotonic()))
    store.close()


def test_eight_processes_one_digest_one_transfer(store: BlobStore) -> None:
    data = os.urandom(4 * 1024 * 1024)  # 16 chunks, 0.02 s apart: the transfer takes >= 0.32 s
    barrier, results = FORK.Barrier(8), FORK.Queue()
    workers = [FORK.Process(target=_race, args=(str(store.root), data, barrier, results), daemon=True)
               for _ in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert len({pid for pid, *_ in outcomes}) == 8
    writers = [o for o in outcomes if o[1]]
    assert len(writers) == 1, f"{len(writers)} processes wrote the blob"
    assert sum(1 for o in outcomes if o[2] is not None) == 1, "the source was read more than once"
    fetch_started = writers[0][2]
    for _, written, read_at, finished in outcomes:
        if not written:
            assert read_at is None
            # It returned only after the one transfer ended: it waited on the lock, then reused.
            assert finished - fetch_started >= 0.25
    assert blob_files(store) == [store.path(sha256_of(data))]
    assert ingest_files(store) == []
    assert_blobs_sound(store)


def wait_until_open(pid: int | None, path: Path, timeout: float = 30) -> None:
    """Wait until process ``pid`` has ``path`` open (it reached the lock and is blocked in flock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == str(path):
                    return
            except FileNotFoundError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never opened {path}")


def _ingest_once(root: str, data: bytes, results: Any) -> None:
    store = BlobStore(root)
    read = []

    def source() -> Iterator[bytes]:
        read.append(True)
        yield data

    results.put((store.ingest(sha256_of(data), source(), len(data)), bool(read)))


def test_waiting_process_reuses_what_the_lock_holder_stored(store: BlobStore) -> None:
    data = b"fetched once" * 1000
    digest = sha256_of(data)
    results = SPAWN.Queue()
    with store.writer(digest, len(data)) as writer:
        assert writer is not None
        waiter = SPAWN.Process(target=_ingest_once, args=(str(store.root), data, results), daemon=True)
        waiter.start()
        lock_file = store.locks_dir / f"sha256-{digest.hex}.lock"
        wait_until_open(waiter.pid, lock_file)
        time.sleep(0.3)
        assert waiter.is_alive() and results.empty(), "the second process did not wait on the lock"
        writer.write(data)
        writer.commit()
    assert results.get(timeout=30) == (False, False)
    waiter.join(10)
    assert store.read_bytes(digest) == data


# -- SIGKILL at random points ----------------------------------------------------------------

KILLED_CHILD = """
import random, sys, time
from cache.model.digest import parse_digest
from cache.store.blobstore import BlobStore

root, digest, seed, size = sys.argv[1], parse_digest(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = random.Random(seed).randbytes(size)
store = BlobStore(root)

def source():
    for start in range(0, size, 65536):
        time.sleep(0.003)
        yield data[start:start + 65536]

print("ready", flush=True)
store.ingest(digest, source(), size)
print("done", flush=True)
"""


def kill_during_ingest(root: Path, seed: int, size: int, delay: float) -> bool:
    """Start an ingest in a new process and SIGKILL it after ``delay``; True when it finished first."""
    data = random.Random(seed).randbytes(size)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(root), str(sha256_of(data)), str(seed), str(size)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait(10)
    return "done" in rest


def test_sigkill_at_random_points_never_leaves_a_partial_blob(tmp_path: Path) -> None:
    root, size, runs = tmp_path / "cache", 1024 * 1024, 24
    BlobStore(root).close()
    window = 0.12  # 16 chunks 3 ms apart, then fsync, publish and the index record
    rng = random.Random(2)
    delays = [window * i / runs + rng.uniform(0, window / runs) for i in range(runs)]
    rng.shuffle(delays)
    finished = 0
    for seed, delay in enumerate(delays):
        finished += kill_during_ingest(root, seed, size, delay)
        store = BlobStore(root)
        assert_blobs_sound(store)  # whatever was visible is whole
        store.close()
    store = BlobStore(root)
    published = {path.name for path in blob_files(store)}
    assert len(published) >= finished
    assert len(published) < runs, "no ingest was ever interrupted: the kill window is too late"
    assert ingest_files(store) or digest_locks(store), "no kill landed inside an ingest"

    result = gc(store, grace=0)
    assert ingest_files(store) == [] and digest_locks(store) == []
    assert result.removed_ingest >= 1
    # The next ingest of every one of them works and stores the right bytes.
    for seed in range(runs):
        data = random.Random(seed).randbytes(size)
        store.ingest(sha256_of(data), slow_chunks(data, 1 << 20, 0), size)
    assert len(blob_files(store)) == runs
    assert_blobs_sound(store)
    store.close()


# -- invariant 5: verify ---------------------------------------------------------------------


def flip_a_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)  # blobs are read-only; damage comes from outside our code
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("full", [False, True], ids=["fast", "full"])
def test_verify_moves_a_flipped_byte_aside_and_never_serves_it(store: BlobStore, full: bool) -> None:
    good = store.put_bytes(os.urandom(10_000))
    bad_data = os.urandom(200_000)
    bad = store.put_bytes(bad_data)
    flip_a_byte(store.path(bad), 123_456)
    checked, corrupt = store.verify(full=full)
    assert checked == 2
    assert [c.digest for c in corrupt] == [bad]
    assert ("sha256" if full else "blake3") in corrupt[0].reason
    moved = corrupt[0].moved_to
    assert moved.parent == store.root / "corrupt" and moved.read_bytes() != bad_data
    assert not store.has(bad)
    with pytest.raises(BlobNotFound):
        store.open(bad)
    assert store.has(good) and list(store.digests()) == [good]
    assert store.index.blob(bad) is not None  # without --repair the record stays
    assert store.verify(full=full) == (1, [])
    # The right bytes can be stored again.
    assert store.ingest(bad, iter([bad_data]), len(bad_data)) is True


def test_verify_repair_drops_the_index_record(store: BlobStore) -> None:
    bad = store.put_bytes(os.urandom(5000))
    store.index.record_diff_id(bad, sha256_of(b"uncompressed"), "application/vnd.oci.image.layer.v1.tar+zstd")
    flip_a_byte(store.path(bad), 0)
    _, corrupt = store.verify(repair=True)
    assert [c.digest for c in corrupt] == [bad]
    assert store.index.blob(bad) is None
    assert store.index.blobs_for_diff_id(sha256_of(b"uncompressed")) == {}


def test_verify_without_index_falls_back_to_sha256(tmp_path: Path) -> None:
    """Invariant 6: losing the index costs no blob; verify still checks every one."""
    store = BlobStore(tmp_path / "cache")
    digest = store.put_bytes(b"survives the index")
    store.close()
    import shutil

    shutil.rmtree(tmp_path / "cache" / "meta")
    store = BlobStore(tmp_path / "cache")
    assert store.read_bytes(digest) == b"survives the index"
    assert store.verify() == (1, [])
    flip_a_byte(store.path(digest), 3)
    assert [c.digest for c in store.verify()[1]] == [digest]
    store.close()


# -- index.json ------------------------------------------------------------------------------


def descriptor(n: int) -> dict[str, object]:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(sha256_of(b"%d" % n)),
            "size": n}


def test_set_and_remove_image(store: BlobStore) -> None:
    store.set_image("docker.io/library/a:1", descriptor(1))
    store.set_image("docker.io/library/a:1", descriptor(2))  # re-pointing replaces
    store.set_image("127.0.0.1:5000/team/app:1", descriptor(3))
    entries = json.loads(store.index_path.read_bytes())["manifests"]
    assert [e["annotations"][REF_NAME] for e in entries] == ["127.0.0.1:5000/team/app:1", "docker.io/library/a:1"]
    assert store.image_descriptor("docker.io/library/a:1")["digest"] == descriptor(2)["digest"]  # type: ignore[index]
    assert store.remove_image("docker.io/library/a:1") is True
    assert store.remove_image("docker.io/library/a:1") is False
    assert [e["annotations"][REF_NAME] for e in store.images()] == ["127.0.0.1:5000/team/app:1"]  # type: ignore[index]


def _set_images(root: str, worker: int, count: int) -> None:
    store = BlobStore(root)
    for n in range(count):
        store.set_image(f"docker.io/w{worker}/img:{n}", descriptor(worker * 1000 + n))


def test_concurrent_set_image_loses_nothing_and_readers_see_whole_files(store: BlobStore) -> None:
    workers, count = 4, 15
    procs = [FORK.Process(target=_set_images, args=(str(store.root), w, count), daemon=True) for w in range(workers)]
    for proc in procs:
        proc.start()
    reads = 0
    while any(proc.is_alive() for proc in procs):
        json.loads(store.index_path.read_bytes())  # never a half-written file
        reads += 1
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    refs = {e["annotations"][REF_NAME] for e in store.images()}  # type: ignore[index]
    assert refs == {f"docker.io/w{w}/img:{n}" for w in range(workers) for n in range(count)}
    assert reads > 0
    assert [p.name for p in store.root.iterdir() if p.name.endswith(".tmp")] == []


# -- the store is an OCI layout that skopeo reads --------------------------------------------


def store_test_image(store: BlobStore, image: BuiltImage, ref: str) -> None:
    """Ingest the blobs of a layout built by tests/images.py, then record the image by ``ref``."""
    for digest in [layer.digest for layer in image.layers] + [image.config_digest, image.manifest_digest]:
        path = image.layout / "blobs" / "sha256" / digest[7:]
        with open(path, "rb") as handle:
            store.ingest(parse_digest(digest), handle, path.stat().st_size, source="test")
    record_image(store, ref, parse_manifest_or_index(image.manifest), platform=None, source="test")


@pytest.mark.parametrize("ref", ["docker.io/library/demo:1", "127.0.0.1:5000/team/app:1"])
def test_skopeo_reads_the_store_as_an_oci_layout(store: BlobStore, tmp_path: Path, ref: str) -> None:
    image = build_image(tmp_path / "src", [random_layer(30_000, 11), random_layer(5000, 12, compressible=True)],
                        write_tag=False)
    store_test_image(store, image, ref)
    assert load_image(store, ref).digest == parse_digest(image.manifest_digest)

    inspected = json.loads(skopeo("inspect", f"oci:{store.root}:{ref}").stdout)
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == [layer.digest for layer in image.layers]
    raw = skopeo("inspect", "--raw", f"oci:{store.root}:{ref}").stdout.encode()
    assert raw == image.manifest  # the exact bytes, as stored

    other = tmp_path / "other"
    skopeo("copy", "--quiet", f"oci:{store.root}:{ref}", f"oci:{other}:x")
    copied = json.loads((other / "index.json").read_bytes())["manifests"]
    assert [m["digest"] for m in copied] == [image.manifest_digest]
    for layer in image.layers:
        assert (other / "blobs" / "sha256" / layer.digest[7:]).is_file()
    assert_blobs_sound(store)
