"""Helpers shared by the SBOM tests: real layers from this machine, images put into a store."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from cache.ingest.pull import PullOptions, pull
from cache.sbom import ImageSbom, image_sbom
from cache.sbom.model import Package
from cache.store.blobstore import BlobStore
from cache.store.images import CachedImage, load_image
from tests.images import build_image, tar_of


def files_from_host(paths: list[Path], root: Path = Path("/")) -> dict[str, bytes]:
    """Host files by their path inside a layer (symlinks are not followed: they are left out)."""
    out: dict[str, bytes] = {}
    for path in paths:
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def tree_of(root: Path, prefix: str = "") -> dict[str, bytes]:
    """Every regular file under ``root`` (e.g. a ``pip install --target`` folder) as layer files."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[prefix + str(path.relative_to(root))] = path.read_bytes()
    return files


def tar_with(files: dict[str, bytes], *, whiteouts: tuple[str, ...] = (), symlinks: dict[str, str] | None = None,
             opaque: tuple[str, ...] = (), executable: tuple[str, ...] = ()) -> bytes:
    """A layer tar with files plus the special entries tests.images.tar_of does not make."""
    buffer = io.BytesIO(tar_of(files))
    extra = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="r") as source, tarfile.open(fileobj=extra, mode="w",
                                                                         format=tarfile.PAX_FORMAT) as tar:
        for member in source.getmembers():
            if member.name in executable:
                member.mode = 0o755
            tar.addfile(member, source.extractfile(member) if member.isreg() else None)
        for path in [*whiteouts, *(f"{folder}/.wh..wh..opq" for folder in opaque)]:
            folder, _, name = path.rpartition("/")
            entry = f"{folder}/.wh.{name}" if not name.startswith(".wh.") else path
            info = tarfile.TarInfo(entry.lstrip("/"))
            tar.addfile(info, io.BytesIO(b""))
        for path, target in (symlinks or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return extra.getvalue()


def image_in_store(store: BlobStore, layout: Path, layers: list[bytes], name: str,
                   compression: str = "gzip") -> CachedImage:
    """Build an OCI layout independently of our code, then pull it into ``store`` as ``name``."""
    build_image(layout, layers, tag="t", compression=compression)
    report = pull(store, f"oci:{layout}:t", PullOptions(name=name))
    return load_image(store, report.ref)


def sbom_of(store: BlobStore, layout: Path, layers: list[bytes], name: str = "test/sbom:1",
            compression: str = "gzip") -> ImageSbom:
    return image_sbom(image_in_store(store, layout, layers, name, compression))


def by_name(sbom: ImageSbom, kind: str) -> dict[str, Package]:
    return {p.name: p for p in sbom.packages if p.type == kind}
