"""The docker save reader on tarballs the tests write: every layout, links, reuse, and bad input."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from cache.errors import DigestMismatch, NotADockerSave, StreamCutOff
from cache.formats.docker_save import LayerChooser, SaveReader
from cache.model.digest import parse_digest
from cache.model.manifests import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from cache.model.refs import ArchiveSource
from cache.sources.archive import pull_from_archive
from cache.store.blobstore import BlobStore
from cache.store.images import load_image
from tests.images import random_layer
from tests.savetars import sha256, write_save_tar


class PipeOnly(io.RawIOBase):
    """A stream that can only be read forward: any seek or tell fails the test."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)

    def seekable(self) -> bool:
        return False

    def seek(self, *args: object) -> int:
        raise AssertionError("the reader must not seek")

    def tell(self) -> int:
        raise AssertionError("the reader must not tell")


def snapshot(store: BlobStore) -> tuple[set[str], bytes, list[str]]:
    """blobs/, index.json and ingest/ as they are: to show an error changed nothing."""
    return (set(os.listdir(store.blobs_dir)), store.index_path.read_bytes(),
            sorted(os.listdir(store.ingest_dir)))


def uncompressed_diff_ids(store: BlobStore, ref: str) -> list[str]:
    """diff_ids of the stored image's layers, by decompressing each blob here (not with our code)."""
    image = load_image(store, ref)
    out = []
    for layer in image.layers:
        data = store.read_bytes(layer.digest)
        if layer.media_type.endswith("+gzip"):
            data = gzip.decompress(data)
        elif layer.media_type.endswith("+zstd"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        out.append(sha256(data))
    return out


LAYERS = [random_layer(300_000, 11), random_layer(50_000, 12, compressible=True), random_layer(2000, 13)]


@pytest.mark.parametrize("layout", ["legacy", "oci", "containerd", "index-only"])
def test_every_layout_imports_with_checked_diff_ids(store: BlobStore, tmp_path: Path, layout: str) -> None:
    save = write_save_tar(tmp_path / "save.tar", LAYERS, layout)
    report = pull_from_archive(store, ArchiveSource(str(save.path)))
    ref = "docker-archive:docker.io/library/app:1" if layout != "index-only" else "localhost/save:latest"
    assert report.ref == ref
    assert [layer.diff_id for layer in report.layers] == save.diff_ids
    assert uncompressed_diff_ids(store, ref) == save.diff_ids
    assert load_image(store, ref).config.raw == save.config  # the config byte for byte
    for layer, expected_blob in zip(report.layers, save.blob_digests, strict=True):
        store_layer = parse_digest(layer.digest)
        assert store.index.diff_id_of(store_layer) == parse_digest(layer.diff_id)
        if layout in ("containerd", "index-only"):  # the registry's gzip blobs, kept as they are
            assert layer.digest == expected_blob and layer.media_type == OCI_LAYER_GZIP
        else:  # uncompressed layers become our zstd
            assert layer.media_type == OCI_LAYER_ZSTD


def test_reader_never_seeks_and_keeps_nothing_before_the_end(store: BlobStore, tmp_path: Path) -> None:
    save = write_save_tar(tmp_path / "save.tar", LAYERS, "legacy")
    before = snapshot(store)
    contents = SaveReader(store, LayerChooser(store), what="test").read(PipeOnly(save.path.read_bytes()))
    assert {layer.diff_id for layer in contents.layers.values()} == {parse_digest(d) for d in save.diff_ids}
    assert set(os.listdir(store.blobs_dir)) == before[0]  # staged in ingest/, not yet visible
    contents.discard()
    assert snapshot(store) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_duplicate_layers_linked_in_the_tar(store: BlobStore, tmp_path: Path, link: str) -> None:
    layers = [LAYERS[0], LAYERS[2], LAYERS[0], LAYERS[2]]  # docker save links the repeats to the first copy
    save = write_save_tar(tmp_path / "dup.tar", layers, "legacy", link=link)
    report = pull_from_archive(store, ArchiveSource(str(save.path)))
    assert [layer.diff_id for layer in report.layers] == save.diff_ids
    assert report.layers[0].digest == report.layers[2].digest
    assert uncompressed_diff_ids(store, report.ref) == save.diff_ids


def test_second_import_writes_nothing(store: BlobStore, tmp_path: Path) -> None:
    first = write_save_tar(tmp_path / "a.tar", LAYERS[:2], "legacy", repo_tags=["app:a"])
    pull_from_archive(store, ArchiveSource(str(first.path)))
    blobs = set(os.listdir(store.blobs_dir))
    # Another image on the same two layers plus a new one: only the new layer (and config, manifest) is added.
    second = write_save_tar(tmp_path / "b.tar", LAYERS, "legacy", repo_tags=["app:b"])
    report = pull_from_archive(store, ArchiveSource(str(second.path)))
    assert [layer.reused for layer in report.layers] == [True, True, False]
    added = set(os.listdir(store.blobs_dir)) - blobs
    assert added == {parse_digest(report.layers[2].digest).hex, parse_digest(report.digest).hex, second.image_id[7:]}


def test_gzip_blob_already_stored_is_not_written_again(store: BlobStore, tmp_path: Path) -> None:
    save = write_save_tar(tmp_path / "c.tar", LAYERS, "containerd")
    pull_from_archive(store, ArchiveSource(str(save.path)))
    again = write_save_tar(tmp_path / "d.tar", LAYERS, "containerd", repo_tags=["app:2"], label="other")
    report = pull_from_archive(store, ArchiveSource(str(again.path)))
    assert all(layer.reused for layer in report.layers)
    assert [layer.digest for layer in report.layers] == save.blob_digests


def test_stdin_style_stream_without_a_first_look(store: BlobStore, tmp_path: Path) -> None:
    save = write_save_tar(tmp_path / "e.tar", LAYERS, "legacy")
    contents = SaveReader(store, LayerChooser(store), what="stdin").read(PipeOnly(save.path.read_bytes()))
    try:
        assert all(layer.staged is not None for layer in contents.layers.values())  # nothing known: keep all
    finally:
        contents.discard()


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_compressed_tarball_imports(store: BlobStore, tmp_path: Path, compress: Callable[[bytes], bytes]) -> None:
    """`docker save app | gzip > app.tar.gz`: read as a stream, with no first look."""
    save = write_save_tar(tmp_path / "j.tar", LAYERS, "legacy", repo_tags=["app:gz"])
    packed = tmp_path / "j.tar.gz"
    packed.write_bytes(compress(save.path.read_bytes()))
    report = pull_from_archive(store, ArchiveSource(str(packed)))
    assert [layer.diff_id for layer in report.layers] == save.diff_ids
    assert uncompressed_diff_ids(store, "docker-archive:docker.io/library/app:gz") == save.diff_ids
    short = tmp_path / "short.tar.gz"
    short.write_bytes(packed.read_bytes()[:-2000])
    with pytest.raises(StreamCutOff, match="ends early"):
        pull_from_archive(store, ArchiveSource(str(short)))


@pytest.mark.parametrize(
    ("layout", "layer", "message"),
    [
        ("oci", 0, "not the one its name says"),  # blobs/sha256/<hex> whose bytes are not <hex>
        ("legacy", 1, "the config says"),  # a layer.tar that is not the config's diff_id
    ],
)
def test_changed_layer_bytes_are_refused(
    store: BlobStore, tmp_path: Path, layout: str, layer: int, message: str
) -> None:
    save = write_save_tar(tmp_path / "f.tar", LAYERS, layout)
    data = save.path.read_bytes()
    marker = LAYERS[layer][2000:2100]
    assert data.count(marker) == 1
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data.replace(marker, marker[::-1]))  # same size, other bytes
    before = snapshot(store)
    with pytest.raises(DigestMismatch, match=message):
        pull_from_archive(store, ArchiveSource(str(bad)))
    assert snapshot(store) == before


def test_truncated_archive_stores_nothing(store: BlobStore, tmp_path: Path) -> None:
    save = write_save_tar(tmp_path / "h.tar", LAYERS, "legacy")
    data = save.path.read_bytes()
    for cut in (len(data) // 3, data.index(b'"Layers"')):  # inside a layer, inside manifest.json
        short = tmp_path / f"short{cut}.tar"
        short.write_bytes(data[:cut])
        before = snapshot(store)
        with pytest.raises((StreamCutOff, NotADockerSave), match=r"cut off|ends early"):
            pull_from_archive(store, ArchiveSource(str(short)))
        assert snapshot(store) == before


def test_tar_that_is_not_a_docker_save(store: BlobStore, tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("etc/hosts")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    noise = tmp_path / "noise.tar"
    noise.write_bytes(os.urandom(20000))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    before = snapshot(store)
    for path in (plain, noise, empty):
        with pytest.raises(NotADockerSave, match="not a docker save"):
            pull_from_archive(store, ArchiveSource(str(path)))
    assert snapshot(store) == before


def test_manifest_naming_a_missing_layer(store: BlobStore, tmp_path: Path) -> None:
    save = write_save_tar(tmp_path / "i.tar", LAYERS[:1], "legacy")
    with tarfile.open(save.path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        for member, data in members:
            if member.name == "manifest.json":
                entry = json.loads(data or b"")[0]
                entry["Layers"] = ["f" * 64 + "/layer.tar"]
                data = json.dumps([entry]).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    before = snapshot(store)
    with pytest.raises(NotADockerSave, match="missing"):
        pull_from_archive(store, ArchiveSource(str(broken)))
    assert snapshot(store) == before
