"""ls, du, verify, gc from the command line: text and --json, exit codes 0/1/2, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cache.model.digest import sha256_of
from cache.store import pins
from cache.store.blobstore import BlobStore
from cache.store.fsutil import InUse
from cli.main import main
from tests.images import build_image, random_layer
from tests.test_store import REPO_ROOT, flip_a_byte, store_test_image

REF_A, REF_B = "docker.io/library/demo:1", "127.0.0.1:5000/team/app:1"


def run(store: BlobStore, *args: str) -> Result:
    return CliRunner().invoke(main, ["--cache-dir", str(store.root), *args])


def run_json(store: BlobStore, *args: str, code: int = 0) -> Any:
    result = run(store, "--json", *args)
    assert result.exit_code == code, result.stderr
    return json.loads(result.stdout)


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own, so stdout and stderr are exactly what a user sees."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=REPO_ROOT)


@pytest.fixture
def two_images(store: BlobStore, tmp_path: Path) -> BlobStore:
    """Two images sharing a base layer, stored through the store API."""
    base = random_layer(40_000, 1)
    first = build_image(tmp_path / "a", [base, random_layer(10_000, 2)], write_tag=False)
    second = build_image(tmp_path / "b", [base, random_layer(12_000, 3)], write_tag=False, label="b")
    store_test_image(store, first, REF_A)
    store_test_image(store, second, REF_B)
    return store


def test_ls_lists_images_in_text_and_json(two_images: BlobStore) -> None:
    pins.pin(two_images, REF_B)
    text = run(two_images, "ls")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["REF", "DIGEST", "SIZE", "SOURCE", "LAST", "USED", "PIN"]
    assert [line.split()[0] for line in lines[1:]] == [REF_B, REF_A]
    assert lines[1].rstrip().endswith("yes") and not lines[2].rstrip().endswith("yes")
    images = run_json(two_images, "ls")["images"]
    by_ref = {image["ref"]: image for image in images}
    assert set(by_ref) == {REF_A, REF_B}
    assert by_ref[REF_B]["pinned"] is True and by_ref[REF_A]["pinned"] is False
    assert by_ref[REF_A]["digest"] == two_images.image_descriptor(REF_A)["digest"]  # type: ignore[index]
    assert by_ref[REF_A]["source"] == "test"


def test_ls_and_du_of_an_empty_cache(store: BlobStore) -> None:
    assert run_json(store, "ls") == {"images": []}
    assert run_json(store, "du") == {"blobs": 0, "bytes": 0, "dedup_saved_bytes": 0, "image_bytes": 0, "images": 0,
                                     "diff_ids_unverified": 0, "diff_ids_mismatched": 0}
    assert run(store, "du").stdout.strip() == "0 B in 0 blobs for 0 images (dedup saved 0 B)"


def test_du_counts_shared_layers_once(two_images: BlobStore) -> None:
    sizes = {path.name: path.stat().st_size for path in two_images.blobs_dir.iterdir()}
    usage = run_json(two_images, "du")
    assert usage["blobs"] == len(sizes) == 7  # 2 manifests, 2 configs, 3 layers (one shared)
    assert usage["bytes"] == sum(sizes.values())
    assert usage["images"] == 2
    shared = min(two_images.size(d) for d in two_images.digests() if two_images.size(d) > 20_000)
    assert usage["dedup_saved_bytes"] == usage["image_bytes"] - usage["bytes"] == shared
    assert "in 7 blobs for 2 images" in run(two_images, "du").stdout


def test_gc_leaves_a_temporary_file_in_use_alone_whatever_its_age(store: BlobStore) -> None:
    staged = store.ingest_dir / "tmp-save-0123"
    in_use = InUse(store.ingest_folder, staged.name)
    staged.write_bytes(b"a layer on its way")
    os.utime(staged, (1, 1))  # as old as can be: only the mark protects it
    assert run_json(store, "gc", "--grace", "0s")["removed_ingest"] == 0 and staged.exists()
    in_use.release()  # published, dropped, or its process died
    assert run_json(store, "gc", "--grace", "0s")["removed_ingest"] == 1 and not staged.exists()


@pytest.mark.parametrize("mode", ["--fast", "--full"])
def test_verify_reports_corruption_with_exit_code_1(two_images: BlobStore, mode: str) -> None:
    clean = run(two_images, "verify", mode)
    assert clean.exit_code == 0
    assert clean.stdout.strip() == f"checked 7 blobs ({mode[2:]}): 0 corrupt"
    victim = max(two_images.digests(), key=two_images.size)
    flip_a_byte(two_images.path(victim), 100)
    report = run_json(two_images, "verify", mode, code=1)
    assert report["checked"] == 7 and report["mode"] == mode[2:] and report["repaired"] is False
    assert [c["digest"] for c in report["corrupt"]] == [str(victim)]
    assert Path(report["corrupt"][0]["moved_to"]).parent == two_images.root / "corrupt"
    assert not two_images.has(victim)
    again = run(two_images, "verify", mode)
    assert again.exit_code == 0 and "checked 6 blobs" in again.stdout


def test_verify_repair_forgets_the_blob(two_images: BlobStore) -> None:
    victim = max(two_images.digests(), key=two_images.size)
    flip_a_byte(two_images.path(victim), 0)
    result = run(two_images, "verify", "--repair")
    assert result.exit_code == 1
    assert f"corrupt: {victim}: blake3 is" in result.stdout and "1 corrupt" in result.stdout
    assert two_images.index.blob(victim) is None


def test_gc_removes_orphans_partial_writes_and_idle_locks(two_images: BlobStore) -> None:
    orphan = two_images.put_bytes(b"no image names me")
    partial = two_images.ingest_dir / f"sha256-{sha256_of(b'x').hex}"
    partial.write_bytes(b"half")
    (two_images.ingest_dir / "tmp-0123").write_bytes(b"half")
    (two_images.locks_dir / f"sha256-{sha256_of(b'x').hex}.lock").touch()
    old = os.stat(partial).st_mtime - 10
    for path in [two_images.path(orphan), partial, two_images.ingest_dir / "tmp-0123"]:
        os.utime(path, (old, old), follow_symlinks=False)

    kept = run_json(two_images, "gc")  # default grace 1h: everything is younger
    assert kept["removed_blobs"] == [] and kept["removed_ingest"] == 0 and two_images.has(orphan)
    dry = run_json(two_images, "gc", "--grace", "0s", "--dry-run")
    assert dry["dry_run"] is True and dry["removed_blobs"] == [str(orphan)] and two_images.has(orphan)
    assert partial.exists()

    done = run_json(two_images, "gc", "--grace", "0s")
    assert done["removed_blobs"] == [str(orphan)] and done["freed_bytes"] == len(b"no image names me")
    assert done["removed_ingest"] == 2 and done["removed_locks"] >= 1
    assert not two_images.has(orphan) and list(two_images.ingest_dir.iterdir()) == []
    assert list(two_images.locks_dir.glob("sha256-*")) == []
    assert len(list(two_images.digests())) == 7  # every blob of both images stays
    assert run(two_images, "verify", "--full").exit_code == 0
    text = run(two_images, "gc", "--grace", "0s")
    assert text.stdout.strip() == "removed 0 orphan blobs (0 B), 0 partial writes, 0 lock files"


@pytest.mark.parametrize(
    "args",
    [["gc", "--grace", "soon"], ["no-such-command"], ["verify", "--sideways"], ["ls", "extra"], ["--bogus", "ls"]],
    ids=" ".join,
)
def test_usage_errors_exit_2(store: BlobStore, args: list[str]) -> None:
    result = run(store, *args)
    assert result.exit_code == 2
    assert "Error:" in result.stderr and result.stdout == ""


def test_unusable_cache_dir_is_one_line_without_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache_dir = str(blocker / "cache")
    for command in (["ls"], ["du"], ["verify"], ["gc"], ["--json", "ls"]):
        result = run_process("--cache-dir", cache_dir, *command)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == f"layerhoard: error: cannot create cache folder {cache_dir}: Not a directory\n"
    verbose = run_process("-v", "--cache-dir", cache_dir, "ls")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("layerhoard: error: cannot create cache folder")


def test_json_goes_to_stdout_alone(two_images: BlobStore) -> None:
    result = run_process("--cache-dir", str(two_images.root), "--json", "du")
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["images"] == 2
