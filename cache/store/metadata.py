"""The metadata index: what is known about the blobs and images, kept in diskcache (SQLite).

Everything here can be rebuilt from blobs/ and index.json, so a lost or damaged index never costs
data (invariant 6). Values are JSON text, never pickle (invariant 7): :class:`JsonOnlyDisk` refuses
any other type, so a stray object fails loudly instead of being pickled.

Keys, one namespace each:
  blob/<digest>      {"size", "media_type", "blake3", "stored_at", "last_used", "source"}
  diffid/<diff_id>   {"<blob digest>": "<media type>", ...}  blobs whose uncompressed sha256 we computed
  blobdiff/<digest>  "<diff_id>"
  pending/<digest>   {"diff_id", "media_type", "since"}  a layer stored with the diff_id its config
                     claims, not yet hashed here (cache/store/diffids.py); never read as a pair
  baddiff/<digest>   {"<claimed diff_id>": "<what its bytes are>", ...}  claims its bytes refuted
  image/<ref>        {"ref", "digest", "media_type", "size", "platform", "source", "stored_at", "last_used"}
  pin/<ref>          "<time pinned>"  (caches made before pins.json only: cache/store/pins.py)
  stat/<name>        integer counters
  edge/<kind>/<digest>  {"<child digest>": "<note>", ...}  content-graph edges no manifest names
                     (cache/store/graph.py: a blob's derived blobs, a subject's referrers)
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from cache.model.digest import Digest, parse_digest
from cache.store.fsutil import file_lock

JsonDict = dict[str, Any]
DBNAME: str = diskcache.core.DBNAME  # the SQLite file in meta/


class JsonOnlyDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache Disk that stores str, bytes and numbers as they are and refuses everything else."""

    _ALLOWED = (str, bytes, int, float)

    def put(self, key: Any) -> Any:
        if type(key) not in self._ALLOWED:
            raise TypeError(f"metadata keys must be str or bytes, not {type(key).__name__}")
        return super().put(key)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if type(value) not in self._ALLOWED:
            raise TypeError(f"metadata values must be JSON text, not {type(value).__name__}")
        return super().store(value, read, key)


class MetadataIndex:
    """Typed access to the diskcache of one store. Safe to share between processes."""

    def __init__(self, directory: Path, lock_path: Path, before_open: Callable[[], None] | None = None) -> None:
        """``before_open`` runs under the same lock, first (the store's checks of the SQLite files)."""
        directory.mkdir(parents=True, exist_ok=True)
        # Concurrent first opens of one SQLite file can fail (diskcache#266): serialise them.
        with file_lock(lock_path):
            if before_open is not None:
                before_open()
            # diskcache closes and reopens its connection while it opens. As the last connection to
            # the file, that close would checkpoint the WAL and delete it: two fsyncs, and one more
            # for the folder when the WAL is made again, in every command. A second connection held
            # meanwhile makes it a plain close; SQLite still checkpoints the WAL as it grows.
            self._db_path = directory / diskcache.core.DBNAME
            keeper = sqlite3.connect(self._db_path, timeout=60)
            try:
                keeper.execute("PRAGMA schema_version").fetchall()  # connected only once it reads
                self._cache = diskcache.Cache(
                    str(directory),
                    disk=JsonOnlyDisk,
                    eviction_policy="none",
                    size_limit=2**62,
                    cull_limit=0,
                    timeout=60,
                    statistics=False,
                    # Every value lives in SQLite, none in side files: one file set to share and rebuild.
                    disk_min_file_size=2**40,
                )
            finally:
                keeper.close()

    def close(self) -> None:
        self._cache.close()

    # -- low level -----------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        raw = self._cache.get(key)
        return None if raw is None else json.loads(raw)

    def _set(self, key: str, value: Any) -> None:
        self._cache.set(key, json.dumps(value, sort_keys=True))

    def _iter(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (key after ``prefix``, value) under one prefix, in one range query on the key index
        (diskcache's iterkeys walks every key: 4 s for the pins of a cache of 100,000 blobs)."""
        for key, raw in self._range(prefix, "value"):
            if isinstance(raw, str):
                yield key, json.loads(raw)

    def _field(self, prefix: str, field: str) -> dict[str, Any]:
        """One field of every JSON value under ``prefix``, read by SQLite (no JSON parsed here)."""
        return dict(self._range(prefix, f"json_extract(value, '$.{field}')"))

    def _range(self, prefix: str, column: str) -> list[tuple[str, Any]]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with contextlib.closing(sqlite3.connect(self._db_path, timeout=60)) as connection:
            rows = connection.execute(  # ``column`` is one of ours, never input
                f"SELECT key, {column} FROM Cache WHERE key >= ? AND key < ? AND raw = 1 AND mode = ?",
                (prefix, end, diskcache.core.MODE_RAW),
            ).fetchall()
        return [(key[len(prefix):], value) for key, value in rows if isinstance(key, str)]

    # -- blobs ---------------------------------------------------------------------------------
    def record_blob(self, digest: Digest, size: int, blake3: str, media_type: str | None, source: str | None) -> None:
        now = time.time()
        self._set(
            f"blob/{digest}",
            {"size": size, "blake3": blake3, "media_type": media_type, "source": source,
             "stored_at": now, "last_used": now},
        )

    def blob(self, digest: Digest) -> JsonDict | None:
        value = self._get(f"blob/{digest}")
        return value if isinstance(value, dict) else None

    def touch_blobs(self, digests: list[Digest]) -> None:
        now = time.time()
        with self._cache.transact(retry=True):
            for digest in digests:
                record = self.blob(digest)
                if record is not None:
                    record["last_used"] = now
                    self._set(f"blob/{digest}", record)

    def batch(self) -> contextlib.AbstractContextManager[object]:
        """One write transaction around many updates (a sweep deleting thousands of blobs pays
        one commit instead of one per blob); other writers wait, readers do not."""
        return self._cache.transact(retry=True)  # type: ignore[no-any-return]

    def drop_blob(self, digest: Digest) -> None:
        """Forget a blob and every diff_id pair that names it."""
        with self._cache.transact(retry=True):
            self._cache.delete(f"blob/{digest}")
            self._cache.delete(f"pending/{digest}")
            self._cache.delete(f"baddiff/{digest}")
            diff_id = self._get(f"blobdiff/{digest}")
            self._cache.delete(f"blobdiff/{digest}")
            if isinstance(diff_id, str):
                pairs = self._get(f"diffid/{diff_id}") or {}
                pairs.pop(str(digest), None)
                if pairs:
                    self._set(f"diffid/{diff_id}", pairs)
                else:
                    self._cache.delete(f"diffid/{diff_id}")

    def blake3_of_blobs(self) -> dict[str, str]:
        """The blake3 recorded at ingest of every blob, by digest string, in one query (verify)."""
        return {name: value for name, value in self._field("blob/", "blake3").items() if isinstance(value, str)}

    def last_used_of_blobs(self) -> dict[str, float]:
        """When each recorded blob was last written or used, by digest string, in one query."""
        return {name: float(value or 0) for name, value in self._field("blob/", "last_used").items()}

    def blobs(self) -> Iterator[tuple[Digest, JsonDict]]:
        for name, value in self._iter("blob/"):
            yield parse_digest(name), value

    # -- diff_id pairs (only ever recorded after we hashed the uncompressed bytes ourselves) -----
    def record_diff_id(self, blob: Digest, diff_id: Digest, media_type: str) -> None:
        with self._cache.transact(retry=True):
            pairs = self._get(f"diffid/{diff_id}") or {}
            pairs[str(blob)] = media_type
            self._set(f"diffid/{diff_id}", pairs)
            self._set(f"blobdiff/{blob}", str(diff_id))

    def blobs_for_diff_id(self, diff_id: Digest) -> dict[Digest, str]:
        """Stored blobs known to uncompress to ``diff_id``, with their media types."""
        pairs = self._get(f"diffid/{diff_id}") or {}
        return {parse_digest(blob): media_type for blob, media_type in pairs.items()}

    def diff_id_of(self, blob: Digest) -> Digest | None:
        value = self._get(f"blobdiff/{blob}")
        return parse_digest(value) if isinstance(value, str) else None

    # -- claims not yet checked, and claims refuted (cache/store/diffids.py) ----------------------
    def record_pending_diff_id(self, blob: Digest, diff_id: Digest, media_type: str) -> None:
        """A stored layer whose config says it uncompresses to ``diff_id``, not hashed here yet.
        Kept apart from the pairs above: nothing that reads pairs sees it until it is settled."""
        self._set(f"pending/{blob}", {"diff_id": str(diff_id), "media_type": media_type, "since": time.time()})

    def pending_diff_id(self, blob: Digest) -> tuple[Digest, str] | None:
        """The claimed diff_id and media type of a layer not checked yet, or None."""
        value = self._get(f"pending/{blob}")
        if not isinstance(value, dict) or not isinstance(value.get("diff_id"), str):
            return None
        return parse_digest(value["diff_id"]), str(value.get("media_type") or "")

    def pending_diff_ids(self) -> dict[Digest, tuple[Digest, str]]:
        """Every layer whose claimed diff_id is not checked yet: blob -> (diff_id, media type)."""
        pending = {}
        for name, value in self._iter("pending/"):
            if isinstance(value, dict) and isinstance(value.get("diff_id"), str):
                pending[parse_digest(name)] = (parse_digest(value["diff_id"]), str(value.get("media_type") or ""))
        return pending

    def settle_diff_id(self, blob: Digest, claimed: Digest, actual: Digest | None, media_type: str,
                       refuted_by: str = "") -> None:
        """Close a claim in one transaction, with what hashing ``blob`` gave (``actual``, None when it
        does not decompress): record the pair when it is the claimed diff_id, else remember the
        refuted claim (``refuted_by`` says what the bytes are). A pending claim the same bytes
        settle (the claimed one, or another that ``actual`` proves) is closed too."""
        with self._cache.transact(retry=True):
            pending = self.pending_diff_id(blob)
            if pending is not None and pending[0] in (claimed, actual):
                self._cache.delete(f"pending/{blob}")
                if pending[0] == actual != claimed:
                    self.record_diff_id(blob, actual, pending[1])
            if actual == claimed:
                self.record_diff_id(blob, claimed, media_type)
                return
            refuted = self._get(f"baddiff/{blob}") or {}
            refuted[str(claimed)] = refuted_by or f"uncompresses to {actual}"
            self._set(f"baddiff/{blob}", refuted)

    def refuted_diff_ids(self) -> dict[Digest, dict[str, str]]:
        """Every claim whose bytes were found not to match: blob -> {claimed diff_id: what they are}."""
        return {parse_digest(name): value for name, value in self._iter("baddiff/") if isinstance(value, dict)}

    def refuted_diff_id(self, blob: Digest, claimed: Digest) -> str | None:
        """What ``blob``'s bytes were found to be when ``claimed`` was checked, or None."""
        value = self._get(f"baddiff/{blob}")
        found = value.get(str(claimed)) if isinstance(value, dict) else None
        return found if isinstance(found, str) else None

    # -- content-graph edges (cache/store/graph.py) -------------------------------------------------------
    def add_edge(self, kind: str, parent: Digest, child: Digest, note: str = "") -> None:
        with self._cache.transact(retry=True):
            children = self._get(f"edge/{kind}/{parent}") or {}
            if children.get(str(child)) != note:
                children[str(child)] = note
                self._set(f"edge/{kind}/{parent}", children)

    def remove_edge(self, kind: str, parent: Digest, child: Digest) -> None:
        with self._cache.transact(retry=True):
            children = self._get(f"edge/{kind}/{parent}") or {}
            if children.pop(str(child), None) is not None:
                self._set(f"edge/{kind}/{parent}", children)

    def edges(self, kind: str) -> dict[str, dict[str, str]]:
        """Every edge of one kind, parent -> {child: note}, in one query."""
        return {parent: children for parent, children in self._iter(f"edge/{kind}/") if isinstance(children, dict)}

    def edges_of(self, kind: str, parent: Digest) -> dict[str, str]:
        children = self._get(f"edge/{kind}/{parent}")
        return children if isinstance(children, dict) else {}

    # -- images --------------------------------------------------------------------------------
    def record_image(self, ref: str, record: JsonDict) -> None:
        now = time.time()
        old = self.image(ref)
        stored_at = old["stored_at"] if old and old.get("digest") == record.get("digest") else now
        self._set(f"image/{ref}", {**record, "ref": ref, "stored_at": stored_at, "last_used": now})

    def image(self, ref: str) -> JsonDict | None:
        value = self._get(f"image/{ref}")
        return value if isinstance(value, dict) else None

    def images(self) -> Iterator[tuple[str, JsonDict]]:
        yield from self._iter("image/")

    def last_used_of_images(self) -> dict[str, float]:
        """When each recorded image was last pulled or used, by ref, in one query."""
        return {ref: float(value or 0) for ref, value in self._field("image/", "last_used").items()}

    def touch_image(self, ref: str) -> None:
        with self._cache.transact(retry=True):
            record = self.image(ref)
            if record is not None:
                record["last_used"] = time.time()
                self._set(f"image/{ref}", record)

    def drop_image(self, ref: str) -> None:
        self._cache.delete(f"image/{ref}")

    # -- pins of caches made before pins.json (cache/store/pins.py) ---------------------------------
    def legacy_pins(self) -> dict[str, float]:
        return {ref: float(when) for ref, when in self._iter("pin/") if isinstance(when, (int, float))}

    def drop_legacy_pins(self) -> None:
        for ref in list(self.legacy_pins()):
            self._cache.delete(f"pin/{ref}")

    # -- counters ------------------------------------------------------------------------------
    def count(self, name: str, amount: int = 1) -> None:
        self._cache.incr(f"stat/{name}", amount, default=0, retry=True)

    def count_many(self, amounts: dict[str, int]) -> None:
        """Add to several counters in one transaction (one pull's figures)."""
        with self._cache.transact(retry=True):
            for name, amount in amounts.items():
                self._cache.incr(f"stat/{name}", amount, default=0)

    def counters(self, prefix: str = "") -> dict[str, int]:
        """Every counter whose name starts with ``prefix`` (the prefix kept), in one range query."""
        return {f"{prefix}{name}": int(value) for name, value in self._range(f"stat/{prefix}", "value")
                if isinstance(value, int)}

    # -- whole-store figures, one query each (/metrics asks on every scrape) ---------------------
    def blob_totals(self) -> tuple[int, int]:
        """(blobs recorded, their bytes): what blobs/ holds, from the index instead of a listing."""
        sizes = self._field("blob/", "size")
        return len(sizes), sum(int(size) for size in sizes.values() if isinstance(size, int))

    def diff_ids_of_blobs(self) -> dict[str, str]:
        """blob -> the diff_id hashed here for it, for every blob that has one."""
        return {blob: value for blob, value in self._iter("blobdiff/") if isinstance(value, str)}

    def keys_under(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (without it): which records exist, none of their values read."""
        return [key for key, _ in self._range(prefix, "1")]
