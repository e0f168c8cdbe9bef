"""A Big-Bang-like set of images, built offline from this machine's own files.

Three base images share one real Debian layer (this machine's /var/lib/dpkg and /usr/share/doc);
two of them add a real language layer (this machine's Python site-packages, its global
node_modules). Application images sit on a base with one large app layer (half random bytes,
half text that compresses about 2:1) and one small top "code" layer. Registry images are pushed
into a docker-registry with skopeo; daemon images are only loaded into a dockerd, the way
locally built images exist on a build machine. Shared base layers are the same tar bytes in both
places, so their diff_ids match across sources as they do for real images.

Every layout is written by tests.images' independent writer (not by layerhoard), with isal gzip
for speed. ``scale`` is the total uncompressed size aimed at; real base layers are capped to a
share of it so a tiny scale stays tiny.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from isal import igzip

from tests.images import LAYER_TYPES, OCI_CONFIG, OCI_MANIFEST, LayoutWriter, load_into_daemon, push, tar_of
from tests.services import Daemon, Registry

_HALF_ENTROPY = bytes(range(97, 113)) * 16  # 256 byte values → 16 letters: 4 bits per byte, ~2:1 in gzip
_PIECE = 16 << 20  # random.randbytes overflows above 256 MB: make content in pieces


@dataclass
class WorkImage:
    """One image of the set: where it lives and what it is made of."""

    name: str  # repository path and tag, e.g. "bigbang/app01:1"
    where: str  # "registry" or "daemon"
    base: str  # name of the base image it sits on ("" for a base)
    diff_ids: list[str] = field(default_factory=list)
    size: int = 0  # uncompressed bytes of its layers
    ref: str = ""  # how layerhoard and skopeo name it: HOST/name, or docker-daemon:name

    @property
    def tag(self) -> str:
        """A tag for this image in one shared OCI layout."""
        return self.name.replace("/", "-").replace(":", "-")


@dataclass
class Workload:
    images: list[WorkImage]
    registry_host: str
    layout: Path  # the generator's own layout (every image, as built)
    layer_sizes: dict[str, int] = field(default_factory=dict)  # diff_id → uncompressed bytes

    @property
    def total_size(self) -> int:
        """Uncompressed bytes of the distinct layers."""
        return sum(self.layer_sizes.values())

    def image(self, name: str) -> WorkImage:
        return next(image for image in self.images if image.name == name)

    def in_registry(self) -> list[WorkImage]:
        return [image for image in self.images if image.where == "registry"]

    def in_daemon(self) -> list[WorkImage]:
        return [image for image in self.images if image.where == "daemon"]


@dataclass(frozen=True)
class Spec:
    scale: int  # total uncompressed bytes aimed at
    apps: int = 17  # application images (plus 3 bases: 20 images)
    daemon_apps: int = 7  # how many of the apps exist only in the daemon
    prefix: str = "bigbang"  # repository namespace (tests make it unique)
    big: int = 0  # bytes of an extra single-layer daemon image (the ADR's 20 GB case); 0: none


def content(rng: random.Random, size: int, compressible: bool) -> bytes:
    pieces = []
    for start in range(0, size, _PIECE):
        piece = rng.randbytes(min(_PIECE, size - start))
        pieces.append(piece.translate(_HALF_ENTROPY) if compressible else piece)
    return b"".join(pieces)


def real_files(roots: list[Path], cap: int) -> dict[str, bytes]:
    """Regular files under ``roots`` in sorted order, up to ``cap`` bytes (paths without the leading /)."""
    files: dict[str, bytes] = {}
    total = 0
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder, name)
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if total + len(data) > cap:
                    return files
                files[str(path).lstrip("/")] = data
                total += len(data)
    return files


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def node_modules() -> list[Path]:
    """The global node_modules of this machine (Debian's npm, or the one inside node's prefix)."""
    candidates = [Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"),
                  Path(sys.prefix) / "lib" / "node_modules", Path("/usr/share/nodejs")]
    return [path for path in candidates if path.is_dir()][:1]


def app_layer(seed: int, size: int) -> bytes:
    """Files of 64 KiB to 8 MiB, alternating random and compressible, about ``size`` bytes in all."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    made = number = 0
    while made < size:
        piece = min(size - made, rng.choice([64 << 10, 512 << 10, 2 << 20, 8 << 20]))
        kind = "bin" if number % 2 == 0 else "txt"
        files[f"opt/app{seed}/{kind}/f{number}.{kind}"] = content(rng, piece, compressible=kind == "txt")
        made += piece
        number += 1
    return tar_of(files)


def code_layer(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    return tar_of({f"opt/app/code-{seed}.txt": content(rng, max(size, 4096), compressible=True)})


def write_image(writer: LayoutWriter, tag: str, tars: list[bytes], compressed: bool,
                blob_cache: dict[str, tuple[str, int]]) -> list[str]:
    """One image into the layout; layers gzip'ed (registry) or left as plain tar (daemon). Returns its diff_ids."""
    descriptors, diff_ids = [], []
    for tar in tars:
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        key = f"{compressed}:{diff_id}"
        if key not in blob_cache:  # a shared base layer is compressed once, so it has one digest everywhere
            blob = igzip.compress(tar, 1) if compressed else tar
            blob_cache[key] = (writer.blob(blob), len(blob))
        digest, size = blob_cache[key]
        descriptors.append({"mediaType": LAYER_TYPES["gzip" if compressed else "none"], "digest": digest,
                            "size": size})
        diff_ids.append(diff_id)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"workload": tag}},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created_by": f"layer {i}"} for i in range(len(tars))]},
                        sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": writer.blob(config), "size": len(config)},
                           "layers": descriptors}, sort_keys=True).encode()
    writer.tag(tag, OCI_MANIFEST, writer.blob(manifest), len(manifest))
    return diff_ids


class Generator:
    """Builds the set into ``workdir`` and places each image in the registry or the daemon."""

    def __init__(self, spec: Spec, workdir: Path, registry: Registry, daemon: Daemon | None,
                 log: bool = False) -> None:
        self.spec, self.registry, self.daemon, self.log = spec, registry, daemon, log
        self.layout = workdir / "generated"
        self.writer = LayoutWriter(self.layout)
        self.blobs: dict[str, tuple[str, int]] = {}
        self.layers: dict[str, int] = {}  # diff_id → uncompressed size
        self.base_tars: dict[str, list[bytes]] = {}

    def say(self, text: str) -> None:
        if self.log:
            print(f"[workload] {text}", file=sys.stderr, flush=True)

    def needs_daemon(self) -> Daemon:
        """The daemon, for a workload that has daemon images (a registry-only one is made without)."""
        if self.daemon is None:
            raise RuntimeError("this workload has daemon images: give the generator a daemon")
        return self.daemon

    def bases(self) -> Iterator[tuple[str, list[bytes]]]:
        scale, prefix = self.spec.scale, self.spec.prefix
        debian = tar_of(real_files([Path("/var/lib/dpkg"), Path("/usr/share/doc")], scale // 20))
        python = tar_of(real_files([site_packages()], scale // 10))
        node = tar_of(real_files(node_modules(), scale // 20))
        yield f"{prefix}/base-debian:1", [debian]
        yield f"{prefix}/base-python:1", [debian, python]
        yield f"{prefix}/base-node:1", [debian, node]

    def app_size(self) -> int:
        base_bytes = sum(len(t) for t in {id(t): t for ts in self.base_tars.values() for t in ts}.values())
        return max(64 << 10, (self.spec.scale - base_bytes) // max(1, self.spec.apps))

    def place(self, image: WorkImage, tars: list[bytes]) -> None:
        compressed = image.where == "registry"
        image.diff_ids = write_image(self.writer, image.tag, tars, compressed, self.blobs)
        image.size = sum(len(t) for t in tars)
        for diff_id, tar in zip(image.diff_ids, tars, strict=True):
            self.layers[diff_id] = len(tar)
        if compressed:
            image.ref = push(self.layout, image.tag, self.registry, image.name)
        else:
            load_into_daemon(self.layout, image.tag, self.needs_daemon(), image.name)
            image.ref = f"docker-daemon:{image.name}"

    def app_tars(self, index: int, base: str, code_seed: int) -> list[bytes]:
        size = self.app_size()
        return [*self.base_tars[base], app_layer(1000 + index, size - size // 50),
                code_layer(code_seed, size // 50)]

    def build(self) -> Workload:
        images: list[WorkImage] = []
        for name, tars in self.bases():
            self.base_tars[name] = tars
            image = WorkImage(name, "registry", "")
            self.place(image, tars)
            images.append(image)
            self.say(f"{name}: {image.size >> 20} MiB, registry")
        base_names = list(self.base_tars)
        first_daemon_app = self.spec.apps - self.spec.daemon_apps
        for index in range(self.spec.apps):
            base = base_names[(index + 1) % len(base_names)]
            where = "daemon" if index >= first_daemon_app else "registry"
            image = WorkImage(f"{self.spec.prefix}/app{index + 1:02}:1", where, base)
            self.place(image, self.app_tars(index, base, code_seed=2000 + index))
            images.append(image)
            self.say(f"{image.name}: {image.size >> 20} MiB on {base}, {where}")
        if self.spec.big:
            images.append(self.big_image())
        return Workload(images, self.registry.host, self.layout, dict(self.layers))

    def rebuild_top_layer(self, workload: Workload, name: str, seed: int) -> WorkImage:
        """The one-layer change: ``name`` (a daemon app) gets a new code layer, same base and app layer."""
        image = workload.image(name)
        index = int(name.split("app")[1].split(":")[0]) - 1
        tars = self.app_tars(index, image.base, code_seed=seed)
        self.place(image, tars)
        workload.layer_sizes[image.diff_ids[-1]] = len(tars[-1])
        return image

    def big_image(self) -> WorkImage:
        """One layer of ``spec.big`` random bytes, streamed to a tar on disk and `docker import`ed."""
        name = f"{self.spec.prefix}/big:1"
        path = self.layout.parent / "big.tar"
        rng = random.Random(7)

        class Random(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
                data = rng.randbytes(min(len(buffer), _PIECE))
                buffer[: len(data)] = data
                return len(data)

        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("big/random.bin")
            info.size = self.spec.big
            tar.addfile(info, io.BufferedReader(Random(), _PIECE))
        daemon = self.needs_daemon()
        daemon.docker("import", str(path), name, check=True)
        path.unlink()
        image = WorkImage(name, "daemon", "", size=self.spec.big, ref=f"docker-daemon:{name}")
        inspect = daemon.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", name, check=True)
        image.diff_ids = json.loads(inspect.stdout)
        self.layers[image.diff_ids[0]] = self.spec.big
        self.say(f"{name}: {self.spec.big >> 20} MiB, daemon (docker import)")
        return image
