"""One member of a shared cache attacks the others (docs/security.md): links, FIFOs and swapped
folders planted by an unprivileged user of the cache's group, against commands run as root.

The victims are root's files outside the cache. After each attack their bytes and modes must be
as before, no file may appear beside them, and the cache must hold only sound blobs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from cache.store.blobstore import BlobStore
from tests.lifecycle_support import Pushed, assert_store_sound, push_images, small_specs
from tests.services import Registry
from tests.test_serve import start
from tests.test_shared_cache import FORK, as_root

pytestmark = pytest.mark.registry
SECRET = b"root:$6$a-password-hash-nobody-else-may-read:19000:0:99999:7:::\n"


@dataclass
class Victims:
    """Root's files outside the cache, with what they held before the attack."""

    folder: Path
    before: dict[str, tuple[bytes, int]]

    def path(self, name: str) -> Path:
        return self.folder / name

    def assert_untouched(self) -> None:
        now = {p.name: (p.read_bytes(), stat.S_IMODE(p.lstat().st_mode)) for p in self.folder.iterdir()}
        assert now == self.before


@pytest.fixture
def victims() -> Iterator[Victims]:
    folder = Path(tempfile.mkdtemp(prefix="lh-victims-", dir="/tmp"))
    os.chmod(folder, 0o755)  # the member can name files here, not read or write them
    files = {"shadow": (SECRET, 0o600), "notes": (b"root's notes\n", 0o640), "motd": (b"welcome\n", 0o644)}
    for name, (data, mode) in files.items():
        (folder / name).write_bytes(data)
        os.chmod(folder / name, mode)
    yield Victims(folder, files)
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    return push_images(registry, tmp_path_factory.mktemp("attack-images"), "attack", small_specs(900))


def _member_run(member: tuple[int, int], action: Callable[[], None]) -> None:
    uid, gid = member
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    action()


def as_member(member: tuple[int, int], action: Callable[[], None]) -> None:
    """Run ``action`` in a child that is the unprivileged member; fail the test if it failed."""
    child = FORK.Process(target=_member_run, args=(member, action), daemon=True)
    child.start()
    child.join(60)
    assert child.exitcode == 0, "the member's attack itself failed"


def assert_blobs_sound(cache: Path) -> None:
    for path in (cache / "blobs" / "sha256").iterdir():
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o444, path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path


def test_links_planted_in_ingest_and_locks_reach_no_victim(
        member: tuple[int, int], shared_dir: Path, images: dict[str, Pushed], victims: Victims) -> None:
    cache, image = shared_dir, images["a"].image
    assert as_root(cache, "ls").returncode == 0  # root lays the cache out
    ingest, locks = cache / "ingest", cache / "locks"

    def attack() -> None:
        # the predictable names of the next pull's writes and locks, pointed at root's files
        os.symlink(victims.path("shadow"), ingest / f"sha256-{image.layers[0].digest[7:]}")  # chmod, resume
        os.symlink(victims.path("notes"), ingest / f"sha256-{image.config_digest[7:]}")  # append
        os.symlink(victims.path("motd"), ingest / f"sha256-{image.layers[1].digest[7:]}")  # truncate, fill
        os.symlink(victims.path("made-by-lock"), locks / f"sha256-{image.layers[0].digest[7:]}.lock")
        os.unlink(locks / "index.json.lock")  # root's, made by `ls`: the folder is the group's
        os.symlink(victims.path("made-by-index-lock"), locks / "index.json.lock")
        os.mkfifo(ingest / f"sha256-{image.manifest_digest[7:]}")

    as_member(member, attack)
    pulled = as_root(cache, "pull", images["a"].ref)
    assert pulled.returncode == 0, pulled.stderr
    victims.assert_untouched()
    assert_blobs_sound(cache)
    assert as_root(cache, "verify", "--full").returncode == 0
    store = BlobStore(cache)
    assert_store_sound(store)
    store.close()


def test_a_folder_swapped_for_a_link_is_refused(
        member: tuple[int, int], shared_dir: Path, images: dict[str, Pushed], victims: Victims) -> None:
    cache = shared_dir
    assert as_root(cache, "ls").returncode == 0

    def attack() -> None:
        os.rename(cache / "ingest", cache / "ingest.old")
        os.symlink(victims.folder, cache / "ingest")

    as_member(member, attack)
    pulled = as_root(cache, "pull", images["a"].ref)
    assert pulled.returncode == 1
    assert pulled.stderr.count("\n") == 1 and "ingest is not a folder" in pulled.stderr, pulled.stderr
    victims.assert_untouched()


def test_a_blob_replaced_by_a_link_is_never_served_or_exported(
        member: tuple[int, int], shared_dir: Path, images: dict[str, Pushed], victims: Victims,
        registry: Registry, tmp_path: Path) -> None:
    cache, ref = shared_dir, images["a"].ref
    layer = images["a"].image.layers[1].digest
    assert as_root(cache, "pull", ref).returncode == 0
    blob = cache / "blobs" / "sha256" / layer[7:]

    def attack() -> None:
        os.unlink(blob)  # the folder is the group's: a member may remove any blob
        os.symlink(victims.path("shadow"), blob)

    as_member(member, attack)
    archive = tmp_path / "a.tar"
    exported = as_root(cache, "export", ref, f"docker-archive:{archive}")
    assert exported.returncode == 1 and exported.stderr.count("\n") == 1, exported.stderr
    assert not archive.exists()
    layout = tmp_path / "layout"
    exported = as_root(cache, "export", ref, f"oci:{layout}:x")
    assert exported.returncode == 1 and exported.stderr.count("\n") == 1, exported.stderr
    for path in layout.rglob("*"):
        assert not path.is_symlink() and (path.is_dir() or SECRET not in path.read_bytes()), path

    store = BlobStore(cache)
    with start(store) as server:
        response = requests.get(f"http://{server.host}/v2/attack/a/blobs/{layer}",
                                params={"ns": registry.host}, timeout=10)
    assert response.status_code == 404 and SECRET not in response.content
    store.close()

    verified = as_root(cache, "verify", "--full")
    assert verified.returncode == 1 and layer in verified.stdout + verified.stderr
    assert not blob.is_symlink()
    again = as_root(cache, "pull", ref)  # fetches the layer anew: a plain, sound blob again
    assert again.returncode == 0, again.stderr
    victims.assert_untouched()
    assert_blobs_sound(cache)


def test_a_blob_link_left_in_place_is_replaced_by_the_next_pull(
        member: tuple[int, int], shared_dir: Path, images: dict[str, Pushed], victims: Victims) -> None:
    cache, ref = shared_dir, images["b"].ref
    assert as_root(cache, "ls").returncode == 0
    blob = cache / "blobs" / "sha256" / images["b"].image.layers[1].digest[7:]
    as_member(member, lambda: os.symlink(victims.path("motd"), blob))  # before the blob was ever stored
    pulled = as_root(cache, "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert not blob.is_symlink()
    victims.assert_untouched()
    assert_blobs_sound(cache)
