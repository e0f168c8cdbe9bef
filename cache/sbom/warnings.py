"""What the scan dropped, said in the document and on stderr: the one place every cap reports to.

Two sources, both kept in the per-layer records so a cached scan says the same: tar entries the
scan skipped (a path climbing out of the layer, a hard link to a file not read), and cataloger
records of files visible in the final image that were not read whole (catalogers/base.py: an
``error`` or ``warnings``). A lower copy of a file that a later layer replaced changes nothing
the document shows, so it warns of nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from cache.sbom.catalogers.base import record_warnings
from cache.sbom.merge import MergedView
from cache.sbom.model import LayerRecord
from cache.sbom.text import one_line

MAX_LISTED = 100  # a hostile layer can make thousands; the count of the rest is still stated


def image_warnings(view: MergedView, layers: Sequence[LayerRecord]) -> list[str]:
    found: list[str] = []
    for layer in layers:
        for path, why in sorted(layer.skipped.items()):
            found.append(f"{path} in layer {_short(layer.diff_id)}: not read: {why}")  # the tar name as written
    for path, lineage in sorted(view.evidence.items()):
        top = lineage[-1]
        for message in record_warnings(top.evidence.record):
            found.append(f"/{path} in layer {_short(layers[top.layer].diff_id)}: {message}")
    found = list(dict.fromkeys(one_line(warning) for warning in found))
    if len(found) > MAX_LISTED:
        found[MAX_LISTED:] = [f"{len(found) - MAX_LISTED} more warnings like these are not listed"]
    return found


def _short(diff_id: str) -> str:
    return diff_id[:19]  # sha256: and 12 hex digits, as docker prints layer ids
