"""Pins: the images no prune evicts, kept in ``pins.json`` at the cache root, beside index.json.

A pin is the one fact in the cache that a user set by hand and that nothing on disk implies, so it
does not live in the metadata index, which may be lost and rebuilt from files (invariant 6): a
damaged or emptied index once took every pin with it. ``pins.json`` is small, replaced atomically
under ``locks/pins.lock``, and read whole; ``gc --rebuild-index`` never touches it. A cache made
before pins.json existed keeps its pins in the index (``pin/<ref>`` keys): they are read from there
until the first change writes pins.json.
"""

from __future__ import annotations

import json
import os
import time

from cache.errors import LayerhoardError
from cache.store.blobstore import BlobStore
from cache.store.folder import UnsafeFile
from cache.store.fsutil import write_atomic

PINS_FILE = "pins.json"
MAX_PINS_JSON = 16 << 20


def pinned(store: BlobStore) -> dict[str, float]:
    """Every pinned reference, with the time it was pinned."""
    try:
        fd = store.root_folder.open(PINS_FILE)
    except FileNotFoundError:
        return store.index.legacy_pins()
    except UnsafeFile as error:
        raise LayerhoardError(f"{error}: move it aside and pin the images again") from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_PINS_JSON + 1)
    try:
        document = json.loads(raw)
        pins = document["pins"]
        return {str(ref): float(when) for ref, when in pins.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise LayerhoardError(
            f"{store.root / PINS_FILE} is damaged ({error}); move it aside and pin the images again"
        ) from None


def pins(store: BlobStore) -> set[str]:
    return set(pinned(store))


def pin(store: BlobStore, ref: str) -> None:
    with store.locks_folder.lock("pins.lock"):
        current = pinned(store)
        current.setdefault(ref, time.time())
        _write(store, current)


def unpin(store: BlobStore, ref: str) -> bool:
    with store.locks_folder.lock("pins.lock"):
        current = pinned(store)
        if current.pop(ref, None) is None:
            return False
        _write(store, current)
        return True


def _write(store: BlobStore, current: dict[str, float]) -> None:
    document = {"pins": dict(sorted(current.items()))}
    write_atomic(store.root / PINS_FILE, json.dumps(document, indent=1).encode() + b"\n")
    store.index.drop_legacy_pins()  # pins.json is the record from now on
