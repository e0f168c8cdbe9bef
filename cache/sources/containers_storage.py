"""Where podman's containers-storage keeps each layer's tar-split record and files (overlay, vfs),
for the rebuild of :mod:`cache.sources.layer_rebuild`: podman's layers without a save.

Below the graph root (``/var/lib/containers/storage`` for root, ``~/.local/share/containers/storage``
rootless; podman's ``/info`` names it ``DockerRootDir``), containers-storage keeps, per driver:

- ``<driver>-layers/layers.json``: every layer, as a JSON list of objects with ``id``, ``parent``
  (the layer below), ``diff-digest`` (the uncompressed tar's sha256: the diff_id) and ``diff-size``;
- ``<driver>-layers/<id>.tar-split.gz``: the layer's tar-split record (as dockerd's);
- the files: ``overlay/<id>/diff`` (only the layer's own files) or ``vfs/dir/<id>`` (the whole file
  system after the layer, where the files the layer's record names hold that layer's bytes);
- ``<driver>-images/<image ID>/=<base64 of "sha256:<image ID>">``: the image's config (a "big data"
  item, named in base64 because its key has a ``:``).

An image's layers are found in layers.json by following the chain from the bottom: the layer whose
diff-digest is the first diff_id and which has no parent, then the one with the next diff_id whose
parent is that layer, and so on (a diff_id alone can name several layers, on other parents). Layers
that containers-storage marks incomplete are skipped. layers.json is untrusted input: read with a
bound, parsed strictly, refused in one line; no lock of containers-storage's is taken (it replaces
the file whole when it writes it).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from cache.errors import DirectReadRefused, InvalidDigest
from cache.model.digest import Digest, parse_digest
from cache.sources.layer_rebuild import LayerPlace, StorageRoot, root_and_driver

# Where each driver keeps a layer's files, below the graph root: the parts around the layer ID.
LAYER_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "overlay": (("overlay",), ("diff",)),
    "vfs": (("vfs", "dir"), ()),
}
MAX_LAYERS_JSON = 64 << 20  # a few hundred bytes a layer: far more layers than any store holds
_LAYER_ID = re.compile(r"[0-9a-f]{64}")


def is_podman(info: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether ``/info`` is podman's: its Docker-compatible answer carries ``BuildahVersion``."""
    return info is not None and "BuildahVersion" in info


def podman_storage(info: dict[str, Any]) -> tuple[str, str]:
    """The graph root and driver of podman's containers-storage, when the driver keeps layers
    where they can be read (overlay, vfs); else DirectReadRefused saying why not."""
    return root_and_driver(info, LAYER_FOLDERS, "podman's")


@dataclass(frozen=True)
class StoredLayer:
    """One entry of layers.json, as far as it is used."""

    id: str
    parent: str | None
    diff_id: Digest | None
    size: int | None
    incomplete: bool


class ContainersStorage(StorageRoot):
    """A containers-storage graph root of one driver, held open."""

    def __init__(self, graph_root: str, driver: str) -> None:
        super().__init__(graph_root, [f"{driver}-layers"], "containers-storage graph root")
        self.driver = driver
        self.route = f"containers-storage {driver}"

    def config(self, image_id: Digest) -> bytes:
        name = "=" + base64.b64encode(str(image_id).encode()).decode()  # containers-storage's big-data name
        return self.read_config([f"{self.driver}-images", image_id.hex, name], image_id)

    def places(self, diff_ids: Sequence[Digest], wanted: Collection[Digest]) -> list[LayerPlace]:
        if not wanted:
            return []  # every layer is stored: layers.json is not even read
        layers = self.layers()
        found: dict[Digest, LayerPlace] = {}  # a layer listed twice is read once
        parent: str | None = None
        before, after = LAYER_FOLDERS[self.driver]
        for diff_id in diff_ids:
            layer = next((entry for entry in layers if entry.diff_id == diff_id and entry.parent == parent
                          and not entry.incomplete), None)
            if layer is None:
                below = f"on layer {parent}" if parent else "at the bottom"
                raise DirectReadRefused(f"{self._layers_json()} has no layer {diff_id} {below}")
            if diff_id in wanted and diff_id not in found:
                found[diff_id] = LayerPlace(diff_id, (f"{self.driver}-layers", f"{layer.id}.tar-split.gz"),
                                            (*before, layer.id, *after), layer.size)
            parent = layer.id
        return list(found.values())

    def _layers_json(self) -> str:
        return f"{self.where}/{self.driver}-layers/layers.json"

    def layers(self) -> list[StoredLayer]:
        """layers.json, read with a bound and parsed strictly."""
        raw = self.read_small([f"{self.driver}-layers", "layers.json"], MAX_LAYERS_JSON)
        return parse_layers(raw, self._layers_json())


def parse_layers(raw: bytes, what: str) -> list[StoredLayer]:
    """The entries of a layers.json; DirectReadRefused in one line for anything malformed."""
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError):
        raise DirectReadRefused(f"{what} is not JSON") from None
    if not isinstance(entries, list):
        raise DirectReadRefused(f"{what} is not a list of layers")
    return [_layer(entry, number, what) for number, entry in enumerate(entries)]


def _layer(entry: object, number: int, what: str) -> StoredLayer:
    if not isinstance(entry, dict):
        raise DirectReadRefused(f"{what}: entry {number} is not an object")
    layer_id, parent = entry.get("id"), entry.get("parent")
    if not isinstance(layer_id, str) or not _LAYER_ID.fullmatch(layer_id):
        raise DirectReadRefused(f"{what}: entry {number} has an id that is not a layer ID")
    if parent not in (None, "") and (not isinstance(parent, str) or not _LAYER_ID.fullmatch(parent)):
        raise DirectReadRefused(f"{what}: entry {number} has a parent that is not a layer ID")
    digest = entry.get("diff-digest")
    try:
        diff_id = parse_digest(digest) if digest not in (None, "") else None
    except InvalidDigest:
        raise DirectReadRefused(f"{what}: entry {number} has a diff-digest that is not a sha256 digest") from None
    size = entry.get("diff-size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise DirectReadRefused(f"{what}: entry {number} has a diff-size that is not a number")
    flags = entry.get("flags")
    if flags is not None and not isinstance(flags, dict):
        raise DirectReadRefused(f"{what}: entry {number} has flags that are not an object")
    return StoredLayer(layer_id, parent or None, diff_id, size if size is not None and size >= 0 else None,
                       bool((flags or {}).get("incomplete")))
