"""Merge per-layer facts bottom-up into what the final image shows, as an overlay filesystem would.

For each layer, in order: its opaque folders hide everything lower beneath them; its ``.wh.``
deletions remove a path and everything under it; any entry of its own replaces a lower entry at the
same path, and a non-folder replaces a lower folder with everything in it; then its own evidence
and symlinks are set. A package database is one file, so its top copy wins whole; nothing is ever
unioned across layers. Each visible evidence path keeps its lineage: the unbroken run of copies
from the layer that last created it up to the top, which layer attribution reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from cache.sbom.model import Evidence, LayerRecord
from cache.sbom.tarpaths import ancestors, is_under


@dataclass
class Copy:
    layer: int
    evidence: Evidence


@dataclass
class MergedView:
    evidence: dict[str, list[Copy]] = field(default_factory=dict)  # path → lineage, bottom first
    symlinks: dict[str, str] = field(default_factory=dict)
    symlink_layer: dict[str, int] = field(default_factory=dict)

    def top(self, path: str) -> Copy | None:
        lineage = self.evidence.get(path)
        return lineage[-1] if lineage else None


def merge(layers: Sequence[LayerRecord]) -> MergedView:
    view = MergedView()
    for index, layer in enumerate(layers):
        for folder in layer.opaque:
            _drop(view, partial(is_under, folder=folder))
        for gone in layer.whiteouts:
            _drop(view, partial(_at_or_under, folder=gone))
        _drop(view, partial(_replaced, layer=layer))
        for path, evidence in layer.evidence.items():
            view.evidence.setdefault(path, []).append(Copy(index, evidence))
        for path, target in layer.symlinks.items():
            view.symlinks[path] = target
            view.symlink_layer[path] = index
    return view


def _at_or_under(path: str, folder: str) -> bool:
    return path == folder or is_under(path, folder)


def _replaced(path: str, layer: LayerRecord) -> bool:
    """Does ``layer`` hide a lower entry at ``path`` with an entry of its own (other than new evidence)?"""
    if path in layer.evidence:
        return False  # a new copy: appended to the lineage instead
    if path in layer.files or path in layer.dirs:
        return True
    return any(folder in layer.files for folder in ancestors(path))


def _drop(view: MergedView, gone: Callable[[str], bool]) -> None:
    for path in [p for p in view.evidence if gone(p)]:
        del view.evidence[path]
    for path in [p for p in view.symlinks if gone(p)]:
        del view.symlinks[path]
        del view.symlink_layer[path]
