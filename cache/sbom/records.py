"""Per-layer scan records in the store's metadata index: ``sbom/<scanner version>/<diff_id>``.

Keyed by the diff_id (the uncompressed tar's digest), never the compressed blob's, so a layer that
arrives gzip from a registry and zstd from the daemon is scanned once. The value is JSON text, as
every value of the index must be; diskcache writes it in one transaction, so a reader sees a whole
record or none. A whole image's SBOM is never stored: it is merged from these on every request.
"""

from __future__ import annotations

import json

from cache.sbom.catalogers import SCANNER_VERSION
from cache.sbom.model import LayerRecord
from cache.store.metadata import MetadataIndex

PREFIX = "sbom/"


def record_key(diff_id: str, scanner_version: str = SCANNER_VERSION) -> str:
    return f"{PREFIX}{scanner_version}/{diff_id}"


class SbomRecords:
    def __init__(self, index: MetadataIndex) -> None:
        self._cache = index._cache  # the index's own diskcache: same file, same JSON-only disk

    def get(self, diff_id: str) -> LayerRecord | None:
        raw = self._cache.get(record_key(diff_id))
        if not isinstance(raw, str):
            return None
        try:
            return LayerRecord.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # damaged or from an incompatible build: scan again

    def put(self, record: LayerRecord) -> None:
        self._cache.set(record_key(record.diff_id), json.dumps(record.to_json(), separators=(",", ":")))

    def forget(self, diff_id: str) -> bool:
        return bool(self._cache.delete(record_key(diff_id)))
