"""Where a legacy dockerd keeps each layer's tar-split record and files (overlay2, vfs), for the
rebuild of :mod:`cache.sources.layer_rebuild`: its layers without ``docker save``.

dockerd keeps, for each layer, the files it unpacked (``overlay2/<cache-id>/diff``) and the rest
of the layer's original tar as a tar-split record
(``image/overlay2/layerdb/sha256/<chain-id>/tar-split.json.gz``, beside ``cache-id`` and ``diff``);
it replays one through the other for ``docker save``. vfs keeps the same records under
``image/vfs/``; its ``vfs/dir/<cache-id>`` is the whole file system after the layer, not only the
layer's files, but the files a layer's tar-split names hold there exactly the bytes that layer
gave them, which is all a replay reads. A chain ID names a layer with everything under it:
``chainID(1) = diffID(1)``, ``chainID(n) = sha256(chainID(n-1) + " " + diffID(n))``. The image's
config is ``image/overlay2/imagedb/content/sha256/<image ID>``, hashed to the image ID. Every file
here is untrusted: the layerdb's ``diff`` must name the layer asked for, ``cache-id`` must be an ID,
and the rebuilt tar must hash to the inspected diff_id.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from cache.errors import DirectReadRefused
from cache.model.digest import Digest, sha256_of
from cache.sources.layer_rebuild import LayerPlace, StorageRoot, root_and_driver

OVERLAY2 = "overlay2"
# Where each driver keeps a layer's files, below the data root: the parts around the cache-id.
LAYER_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    OVERLAY2: ((OVERLAY2,), ("diff",)),
    "vfs": (("vfs", "dir"), ()),
}
MAX_SMALL_FILE = 256  # a layerdb ``diff`` or ``cache-id`` file: one digest or ID
_CACHE_ID = re.compile(rb"[0-9a-f]{64}")


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """The chain ID of each layer: the name dockerd's layer store gives a layer and all below it."""
    chain: list[Digest] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else sha256_of(f"{chain[-1]} {diff_id}".encode()))
    return chain


def daemon_storage(info: dict[str, Any] | None) -> tuple[str, str]:
    """The data root and driver of a daemon whose ``/info`` says it keeps layers where they can be
    read (overlay2, vfs); else DirectReadRefused saying why not."""
    if info is None:
        raise DirectReadRefused("the daemon did not answer /info, so its storage is unknown")
    return root_and_driver(info, LAYER_FOLDERS, "the daemon's")


class DockerdStorage(StorageRoot):
    """A dockerd data root of one driver, held open."""

    def __init__(self, data_root: str, driver: str = OVERLAY2) -> None:
        super().__init__(data_root, ["image", driver, "layerdb"], "dockerd data root")
        self.driver = self.route = driver

    def config(self, image_id: Digest) -> bytes:
        return self.read_config(["image", self.driver, "imagedb", "content", "sha256", image_id.hex], image_id)

    def places(self, diff_ids: Sequence[Digest], wanted: Collection[Digest]) -> list[LayerPlace]:
        found: dict[Digest, LayerPlace] = {}  # a layer listed twice is read once
        for chain_id, diff_id in zip(chain_ids(diff_ids), diff_ids, strict=True):
            if diff_id in wanted and diff_id not in found:
                found[diff_id] = self._place(chain_id, diff_id)
        return list(found.values())

    def _place(self, chain_id: Digest, diff_id: Digest) -> LayerPlace:
        layerdb = ("image", self.driver, "layerdb", "sha256", chain_id.hex)
        if self.read_small([*layerdb, "diff"], MAX_SMALL_FILE).strip() != str(diff_id).encode():
            raise DirectReadRefused(f"the daemon's layer {chain_id} is not the layer {diff_id}")
        cache_id = self.read_small([*layerdb, "cache-id"], MAX_SMALL_FILE).strip()
        if not _CACHE_ID.fullmatch(cache_id):
            raise DirectReadRefused(f"the daemon's layer {chain_id} has a cache-id that is not a layer ID")
        before, after = LAYER_FOLDERS[self.driver]
        return LayerPlace(diff_id, (*layerdb, "tar-split.json.gz"), (*before, cache_id.decode(), *after))
