"""One cache folder, two users in one group (docs/shared-cache.md): root sets it up with
``install -d -m 2775 -g GROUP``, both work with umask 022, and each can pull, prune, gc and verify
what the other wrote."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import stat
import subprocess
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache.store.blobstore import BlobStore
from cli.main import main
from tests.lifecycle_support import Pushed, assert_store_sound, push_images, refs, run_cli, small_specs, stored
from tests.services import Registry

pytestmark = pytest.mark.registry
FORK = multiprocessing.get_context("fork")
# The forked child cannot read the interpreter's files (under root's 0700 home): load what it runs now.
for _module in ("concurrent.futures.thread", "cli.commands.pull", "cli.commands.lifecycle",
                "cli.commands.maintenance", "cache.sources.registry", "cache.registry.client"):
    importlib.import_module(_module)


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pushed]:
    return push_images(registry, tmp_path_factory.mktemp("shared-images"), "shared", small_specs(800))


def _member_main(member: tuple[int, int], cache: str, args: tuple[str, ...], out: Connection) -> None:
    uid, gid = member
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    os.umask(0o022)
    os.environ["HOME"] = str(Path(cache).parent)
    result = CliRunner().invoke(main, ["--cache-dir", cache, *args])
    out.send((result.exit_code, result.stdout, result.stderr))


def as_member(member: tuple[int, int], cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as the other user. Forked (the interpreter lives under root's 0700 home), so the
    code is already loaded; the child drops to the user's uid/gid and umask 022 first."""
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_member_main, args=(member, str(cache), args, send), daemon=True)
    child.start()
    code, stdout, stderr = receive.recv() if receive.poll(120) else (-1, "", "no answer")
    child.join(30)
    return subprocess.CompletedProcess(args, code, stdout, stderr)


def as_root(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cache, *args, umask=0o022)


def assert_group_writable_tree(cache: Path, gid: int) -> None:
    for folder, _, files in os.walk(cache):
        info = os.stat(folder)
        assert stat.S_IMODE(info.st_mode) == 0o2775, (folder, oct(info.st_mode))
        assert info.st_gid == gid, folder
        for name in files:
            path = Path(folder) / name
            mode = stat.S_IMODE(path.stat().st_mode)
            assert path.stat().st_gid == gid, path
            if path.parent.name == "meta":
                assert mode & 0o060 == 0o060, (path, oct(mode))  # SQLite files: the group writes them
            if path.parent.name == "sha256":
                assert mode == 0o444, (path, oct(mode))  # blobs stay read-only for everyone


def test_two_users_share_one_cache(member: tuple[int, int], shared_dir: Path, images: dict[str, Pushed]) -> None:
    cache, (_, gid) = shared_dir, member
    first = as_root(cache, "pull", images["a"].ref)
    assert first.returncode == 0, first.stderr
    assert_group_writable_tree(cache, gid)

    second = as_member(member, cache, "--json", "pull", images["b"].ref)  # reuses root's base layer
    assert second.returncode == 0, second.stderr
    assert '"reused": true' in second.stdout
    assert_group_writable_tree(cache, gid)

    for args in (("pin", images["a"].ref), ("prune", "--all", "--grace", "0s"), ("verify", "--full"),
                 ("stats",), ("ls",)):
        done = as_member(member, cache, *args)
        assert done.returncode == 0, (args, done.stderr)
    store = BlobStore(cache)
    assert refs(store) == {images["a"].ref}
    assert as_member(member, cache, "unpin", images["a"].ref).returncode == 0
    cleared = as_member(member, cache, "prune", "--all", "--grace", "0s")  # deletes root's blobs
    assert cleared.returncode == 0, cleared.stderr
    assert stored(store) == set() and refs(store) == set()

    # root's interrupted write of a layer: the member cannot resume a file it cannot write, so it
    # starts that blob over instead of failing
    layer = images["a"].image.layers[1].digest
    leftover = cache / "ingest" / f"sha256-{layer[7:]}"
    leftover.write_bytes(b"partial bytes of an interrupted pull")
    os.chmod(leftover, 0o644)
    again = as_member(member, cache, "pull", images["a"].ref)
    assert again.returncode == 0, again.stderr
    assert as_member(member, cache, "gc", "--grace", "0s").returncode == 0
    assert as_root(cache, "pull", images["b"].ref).returncode == 0
    assert refs(store) == {images["a"].ref, images["b"].ref}
    assert_group_writable_tree(cache, gid)
    assert_store_sound(store)
    store.close()
